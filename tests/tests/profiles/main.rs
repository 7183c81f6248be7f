//! Profiles, Landlock, loopback ports, daemon sockets and privilege
//! hardening of `nono-agent exec`, seen from inside the sandbox.
//!
//! Each check runs a Python probe (`nono_tests::profilelab::PROBE_PY`) in
//! the sandbox that performs one operation per argument and reports its
//! errno; where a refusal is expected, the same operation is shown to work
//! without the restriction (outside, or without the flag), so the test can
//! fail. Everything created (files under /var/tmp, $HOME, /etc, /usr; unix
//! sockets, including a well-known daemon socket path that does not exist
//! on this machine; listeners) is removed by guards, also on panic.
//!
//! Needs root, a kernel with Landlock (ABI >= 6), cgroup v2 and BPF;
//! `/usr/bin/python3`, `git`, `cargo`, `node`, `setpriv`, `mount`. No
//! network traffic leaves loopback. Run with
//! `cargo test -p nono-tests --test profiles`.
//!
//! Failing on the agent at the time of writing (agent or profile problems,
//! each explained at the test):
//! * `default_profile_proc_is_readable_*`: the Landlock rule for `/proc` is
//!   opened on the agent's procfs, the child then mounts a fresh one that no
//!   rule covers: all of /proc is EACCES under any profile as root.
//! * `abstract_unix_socket_scoped_seccomp`, `user_cannot_reach_root_only_socket_seccomp`:
//!   the seccomp supervisor performs unix connects itself, as the agent
//!   (root, no Landlock domain, host mount namespace).
//! * `daemon_socket_other_names_refused_bpf`: under bpf daemon sockets are
//!   hidden by path only; a hard link or bind mount of the socket reaches it.
//! * `builtin_ci_python_python3_from_path_as_is`: where `python3` in PATH is
//!   a pyenv shim under `$HOME`, ci-python does not let it execute.
//!
//! One module per part (test names carry it, e.g. `landlock::`): `landlock`
//! (Landlock with the default profile), `subcommands` (bad profiles and the
//! profile subcommands), `loopback` (loopback ports), `sockets` (daemon and
//! unix sockets), `escapes` (escape attempts from a profile sandbox),
//! `builtin` (the built-in profiles with real tools).

mod builtin;
mod escapes;
mod landlock;
mod loopback;
mod sockets;
mod subcommands;

use std::fs;
use std::path::{Path, PathBuf};

use nono_tests::profilelab::PYTHON;
use nono_tests::sys::{self, CmdOutput, TempDir};

const EACCES: i32 = libc::EACCES;
const EROFS: i32 = libc::EROFS;
const EPERM: i32 = libc::EPERM;
const ESRCH: i32 = libc::ESRCH;

/// Where directories outside every path of the `default` profile live
/// (`/tmp` is writable under `default`, `/var/tmp` is not even readable).
const OUTSIDE: &str = "/var/tmp";

fn prereqs() {
    sys::require_prereqs();
    assert!(
        Path::new(PYTHON).is_file(),
        "{PYTHON} is needed for the in-sandbox probe"
    );
    let abi = landlock_abi();
    assert!(
        abi >= 6,
        "Landlock ABI {abi} < 6: the profile tests need Landlock with signal/abstract-socket scoping"
    );
}

fn landlock_abi() -> i64 {
    // SAFETY: version query: NULL attr, size 0, flag 1 (LANDLOCK_CREATE_RULESET_VERSION).
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    }
}

fn home() -> PathBuf {
    let h =
        PathBuf::from(std::env::var_os("HOME").expect("HOME must be set (the profiles use $HOME)"));
    assert!(h.is_dir(), "HOME={} is not a directory", h.display());
    h
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn ops<const N: usize>(v: [String; N]) -> Vec<String> {
    v.to_vec()
}

fn assert_code(out: &CmdOutput, code: i32, what: &str) {
    assert_eq!(out.code(), code, "{what}\n{}", out.describe());
}

/// The sandbox ran to its end: the agent printed its summary line.
fn assert_agent_finished(out: &CmdOutput, what: &str) {
    assert!(
        out.stderr.contains("nono-agent: sandbox ") && out.stderr.contains(" denied"),
        "{what}: no summary line from the agent (did it die?)\n{}",
        out.describe()
    );
}

fn write_profile(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path(name);
    fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}
