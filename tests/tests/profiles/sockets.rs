//! Part 4: daemon sockets, abstract and root-only unix sockets.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;

use nono_tests::profilelab::{
    probe_argv, unique, Acceptor, BindMount, DaemonSocket, Exec, RemoveOnDrop, Scratch, PYTHON,
};
use nono_tests::sys::{self, TempDir};

use super::{assert_code, ops, prereqs, s, write_profile, EACCES, EPERM};

/// The daemon socket tests share the stand-in path: one at a time.
fn daemon_lock() -> std::sync::MutexGuard<'static, ()> {
    static L: std::sync::Mutex<()> = std::sync::Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// A listening socket at a well-known daemon path: reachable outside;
/// inside refused (also through a symlink in /tmp) unless allowed by flag
/// or profile. Both enforcers in one test: the path is shared.
#[test]
fn daemon_socket_refused_unless_allowed() {
    prereqs();
    let _serial = daemon_lock();
    let d = DaemonSocket::new();
    eprintln!("daemon socket stand-in: {}", d.s());
    let link = RemoveOnDrop::fresh(std::env::temp_dir().join(unique("daemon-link")));
    symlink(&d.path, &link.0).expect("symlink to the daemon socket");
    // Outside: both names connect.
    for p in [&d.path, &link.0] {
        let mut c = std::os::unix::net::UnixStream::connect(p)
            .unwrap_or_else(|e| panic!("outside: connect {}: {e}", p.display()));
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut c, &mut buf).expect("greeting");
        assert_eq!(&buf, b"hello");
    }
    let dir = TempDir::new("prof-daemon");
    let allow_prof = write_profile(
        &dir,
        "allow.toml",
        &format!(
            "extends = \"default\"\n[network]\nallow_unix_sockets = [\"{}\"]\n",
            d.s()
        ),
    );
    let probe_ops = ops([format!("unix={}", d.s()), format!("unix={}", link.s())]);
    for enf in ["bpf", "seccomp"] {
        for flags in [vec![], vec!["--profile".to_string(), "default".to_string()]] {
            let what = format!("{enf} {flags:?}");
            let before = d.accepted();
            let p = Exec::new(enf).flags(&flags).probe(&probe_ops);
            assert_code(&p.out, 0, &what);
            eprintln!("{what}: {:?}", p.results);
            p.refused(0, &[], &format!("{what}: the daemon socket"));
            p.refused(1, &[], &format!("{what}: a symlink to the daemon socket"));
            assert_eq!(
                d.accepted(),
                before,
                "{what}: the daemon accepted a connection"
            );
        }
        for flags in [
            vec!["--allow-unix-socket".to_string(), d.s()],
            vec![
                "--profile".to_string(),
                "default".to_string(),
                "--allow-unix-socket".to_string(),
                d.s(),
            ],
            vec!["--profile".to_string(), s(&allow_prof)],
        ] {
            let what = format!("{enf} {flags:?}");
            let p = Exec::new(enf).flags(&flags).probe(&probe_ops);
            assert_code(&p.out, 0, &what);
            assert_eq!(p.ok(0, &format!("{what}: allowed socket")).out, "hello");
            assert_eq!(
                p.ok(1, &format!("{what}: symlink to the allowed socket"))
                    .out,
                "hello"
            );
        }
    }
}

/// Other names for the same daemon socket (a hard link, a bind mount),
/// made outside before the sandbox starts, are refused too: the agent
/// identifies the sockets by inode ("catches every other name for the same
/// socket (symlinks, bind mounts, hard links)", sandbox/daemons.rs).
/// (Fails under bpf: the child only bind-mounts /dev/null over the
/// well-known paths; the inode check exists in the seccomp supervisor only.)
fn daemon_socket_other_names(enf: &str) {
    prereqs();
    let _serial = daemon_lock();
    let d = DaemonSocket::new();
    let parent = d.path.parent().expect("parent").to_path_buf();
    // A directory on the socket's file system for the hard link.
    let hl_dir = Scratch::new(&s(&parent), "hardlink");
    let hl = hl_dir.path("hl.sock");
    fs::hard_link(&d.path, &hl).expect("hard link to the daemon socket");
    let bind = BindMount::new(&d.path, std::env::temp_dir().join(unique("bind.sock")));
    let probe_ops = ops([
        format!("unix={}", d.s()),
        format!("unix={}", s(&hl)),
        format!("unix={}", bind.s()),
    ]);
    // Outside, every name reaches the daemon.
    let out = sys::run_timeout(
        Command::new(PYTHON).args(&probe_argv(&probe_ops)[1..]),
        sys::CMD_TIMEOUT,
    );
    assert_eq!(
        out.stdout.matches("\"ok\": true").count(),
        3,
        "outside, all three names should connect\n{}",
        out.describe()
    );
    let before = d.accepted();
    let p = Exec::new(enf)
        .flags(["--profile", "default"])
        .probe(&probe_ops);
    eprintln!("{enf}: {:?}", p.results);
    assert_code(&p.out, 0, "probe");
    p.refused(0, &[], &format!("{enf}: the daemon socket"));
    p.refused(1, &[], &format!("{enf}: a hard link to the daemon socket"));
    p.refused(2, &[], &format!("{enf}: a bind mount of the daemon socket"));
    assert_eq!(
        d.accepted(),
        before,
        "{enf}: the daemon accepted a connection"
    );
}

#[test]
#[ignore = "known limit (README, Limits): under the bpf enforcer daemon sockets are hidden by path, so a hard link or bind mount of the socket elsewhere is not refused; run with --ignored to check a fix"]
fn daemon_socket_other_names_refused_bpf() {
    daemon_socket_other_names("bpf");
}

#[test]
fn daemon_socket_other_names_refused_seccomp() {
    daemon_socket_other_names("seccomp");
}

/// Landlock scopes abstract unix sockets to the sandbox, with a profile and
/// without one (the baseline domain): a host abstract socket, reachable from
/// outside, is refused. (Fails under seccomp: the supervisor connects on the
/// sandbox's behalf, from the agent, which has no Landlock domain, so the
/// scope never applies.)
fn abstract_socket_scoped(enf: &str) {
    prereqs();
    let name = unique("abstract");
    let l = Acceptor::unix_abstract(&name);
    let op = vec![format!("unix=@{name}")];
    let argv = nono_tests::profilelab::probe_argv(&op);
    let outside = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .expect("run the probe outside");
    assert!(
        String::from_utf8_lossy(&outside.stdout).contains("\"ok\": true"),
        "{enf}: the abstract socket must be reachable outside a sandbox: {outside:?}"
    );
    let accepted_outside = l.accepted();
    assert!(
        accepted_outside > 0,
        "{enf}: the listener saw no connection from outside"
    );
    for flags in [vec![], vec!["--profile", "default"]] {
        let before = l.accepted();
        let p = Exec::new(enf).flags(flags.clone()).probe(&op);
        assert_code(&p.out, 0, "probe");
        p.refused(
            0,
            &[EPERM],
            &format!(
                "{enf}: a host abstract unix socket from a sandbox with {flags:?} (Landlock scope)"
            ),
        );
        assert_eq!(
            l.accepted(),
            before,
            "{enf}: the abstract listener accepted a connection ({flags:?})"
        );
    }
}

#[test]
fn abstract_unix_socket_scoped_bpf() {
    abstract_socket_scoped("bpf");
}

#[test]
#[ignore = "known limit (README, Limits): the seccomp supervisor performs unix connects outside the profile's Landlock domain, so abstract-socket scoping does not apply to them; run with --ignored to check a fix"]
fn abstract_unix_socket_scoped_seccomp() {
    abstract_socket_scoped("seccomp");
}

/// `--user nobody`: a socket only root may reach (0600 in a 0700 directory)
/// stays out of reach inside the sandbox, as it is outside for nobody.
/// (Fails under seccomp as root: the supervisor resolves and connects the
/// path with the agent's credentials; the README's advice "prefer --user"
/// does not help.)
fn user_cannot_reach_root_socket(enf: &str) {
    prereqs();
    sys::require_tool("setpriv", "running the outside check as nobody");
    let d = Scratch::new("/tmp", "rootonly");
    fs::set_permissions(&d.0, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
    let sock = d.path("root.sock");
    let l = Acceptor::unix_path(&sock, 0o600);
    let op = vec![format!("unix={}", s(&sock))];
    // Outside as nobody: refused by the file system.
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(probe_argv(&op));
    let out = sys::run_timeout(&mut c, sys::CMD_TIMEOUT);
    assert!(
        out.stdout.contains("\"errno\": 13"),
        "outside, nobody should get EACCES\n{}",
        out.describe()
    );
    let before = l.accepted();
    for flags in [
        vec!["--user", "nobody"],
        vec!["--user", "nobody", "--profile", "default"],
    ] {
        let what = format!("{enf} {flags:?}: root-only socket");
        let p = Exec::new(enf).flags(&flags).probe(&op);
        assert_code(&p.out, 0, &what);
        p.refused(0, &[EACCES], &what);
    }
    assert_eq!(
        l.accepted(),
        before,
        "{enf}: the root-only socket accepted a connection from nobody"
    );
}

#[test]
fn user_cannot_reach_root_only_socket_bpf() {
    user_cannot_reach_root_socket("bpf");
}

#[test]
fn user_cannot_reach_root_only_socket_seccomp() {
    user_cannot_reach_root_socket("seccomp");
}
