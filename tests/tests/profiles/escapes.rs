//! Part 5: escape attempts from a profile sandbox (incl. a setuid helper).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use nono_tests::profilelab::{unique, Exec, Scratch};
use nono_tests::sys;

use super::{assert_agent_finished, assert_code, prereqs, s, EPERM, ESRCH, OUTSIDE};

fn escapes(enf: &str) {
    prereqs();
    let cg2 = sys::cgroup2_mount().expect("cgroup2 mount");
    let bpffs = sys::bpffs_mount().expect("bpffs mount");
    let cwd = Scratch::new(OUTSIDE, "cwd");
    let evil = unique("evil");
    let me = std::process::id();
    let mut probe_ops = vec![
        format!("writeval={}/nono/cgroup.procs,0", s(&cg2)),
        format!("writeval={}/cgroup.procs,0", s(&cg2)),
        format!("mkdir={}/nono/{evil}", s(&bpffs)),
        "ptrace=AGENTPID".to_string(),
        "kill=AGENTPID,9".to_string(),
        format!("ptrace={me}"),
        format!("kill={me},0"),
        "read=/proc/self/cgroup".to_string(),
    ];
    if enf == "bpf" {
        // The paths the sandbox is told about.
        probe_ops.extend([
            "writeval=$NONO_CGROUP/../cgroup.procs,0".to_string(),
            "writeval=$NONO_CGROUP/cgroup.procs,0".to_string(),
            format!("mkdir=$NONO_BPF_PIN_DIR/../{evil}"),
            format!("mkdir=$NONO_BPF_PIN_DIR/{evil}"),
        ]);
    }
    let p = Exec::new(enf)
        .flags(["--profile", "default"])
        .cwd(&cwd.0)
        .probe_with_agent_pid(&probe_ops);
    eprintln!("{enf}: {:?}", p.results);
    assert_code(&p.out, 0, &format!("{enf}: probe"));
    assert_agent_finished(&p.out, &format!("{enf}: after kill/ptrace of the agent"));
    p.refused(0, &[], "write 0 to the parent cgroup's cgroup.procs");
    p.refused(1, &[], "write 0 to the root cgroup.procs");
    p.refused(2, &[], "mkdir in bpffs");
    let agent_pid: i32 = p.results[3].arg.parse().unwrap_or(0);
    assert!(
        agent_pid > 1,
        "the probe did not get the agent's pid: {:?}",
        p.results[3]
    );
    p.refused(3, &[ESRCH, EPERM], "ptrace of the agent's host pid");
    p.refused(4, &[ESRCH, EPERM], "SIGKILL to the agent's host pid");
    p.refused(5, &[ESRCH, EPERM], "ptrace of the test process");
    p.refused(6, &[ESRCH, EPERM], "signal 0 to the test process");
    // Where /proc is readable (see `default_profile_proc_is_readable_*`),
    // the process is still at the root of its cgroup namespace.
    let cg = &p.results[7];
    if cg.ok {
        assert!(
            cg.out.lines().any(|l| l == "0::/"),
            "{enf}: the process should still be at the root of its cgroup namespace\n{}",
            cg.out
        );
    }
    if enf == "bpf" {
        assert!(
            p.results[8].arg.contains("/nono/"),
            "NONO_CGROUP should be set: {:?}",
            p.results[8]
        );
        p.refused(8, &[], "write 0 to $NONO_CGROUP/../cgroup.procs");
        p.refused(9, &[], "write 0 to $NONO_CGROUP/cgroup.procs");
        p.refused(10, &[], "mkdir next to $NONO_BPF_PIN_DIR");
        p.refused(11, &[], "mkdir in $NONO_BPF_PIN_DIR");
    }
    assert!(
        !bpffs.join("nono").join(&evil).exists(),
        "a directory was created in bpffs"
    );
}

#[test]
fn escape_attempts_from_profile_sandbox_bpf() {
    escapes("bpf");
}

#[test]
fn escape_attempts_from_profile_sandbox_seccomp() {
    escapes("seccomp");
}

/// A setuid-root copy of `id`, executable under the profile with --exec,
/// run as --user nobody: no_new_privs keeps euid = nobody.
fn setuid_helper(enf: &str) {
    prereqs();
    sys::require_tool("setpriv", "running the setuid helper as nobody outside");
    let d = Scratch::new(OUTSIDE, "suid");
    let id = d.path("id");
    fs::copy("/usr/bin/id", &id).expect("copy /usr/bin/id");
    std::os::unix::fs::chown(&id, Some(0), Some(0)).expect("chown root");
    fs::set_permissions(&id, fs::Permissions::from_mode(0o4755)).expect("chmod 4755");
    let idp = s(&id);
    // $CWD is writable (so executable) under the profile: run elsewhere.
    let cwd = Scratch::new(OUTSIDE, "cwd");
    // Outside, nobody running it gets euid 0 (the bit is effective here).
    let out = sys::run_timeout(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&id)
            .arg("-u"),
        sys::CMD_TIMEOUT,
    );
    assert_eq!(
        out.stdout.trim(),
        "0",
        "outside, the setuid copy run by nobody should report euid 0\n{}",
        out.describe()
    );
    let p = Exec::new(enf)
        .flags(["--profile", "default", "--exec", &d.s(), "--user", "nobody"])
        .cwd(&cwd.0)
        .probe(&[
            "getuid".to_string(),
            "nnp".to_string(),
            format!("exec={idp},-u"),
            format!("exec={idp}"),
        ]);
    let what = format!("{enf}: setuid-root helper run as --user nobody");
    assert_code(&p.out, 0, &what);
    assert_eq!(
        p.ok(0, &what).out,
        "65534 65534",
        "{what}: uid/euid of the probe"
    );
    assert_eq!(p.ok(1, &what).out, "1", "{what}: no_new_privs");
    assert_eq!(
        p.ok(2, &what).out.trim(),
        "65534",
        "{what}: euid reported by the helper"
    );
    let full = p.ok(3, &what).out.clone();
    assert!(
        !full.contains("euid=0") && full.starts_with("uid=65534"),
        "{what}: `id` should show nobody and no euid=0: {full}"
    );
    // Without --exec the profile does not even let it run.
    let out = Exec::new(enf)
        .flags(["--profile", "default", "--user", "nobody"])
        .cwd(&cwd.0)
        .run(&[&idp, "-u"]);
    assert_code(
        &out,
        126,
        &format!("{enf}: setuid helper outside the exec rules"),
    );
}

#[test]
fn setuid_helper_gains_nothing_bpf() {
    setuid_helper("bpf");
}

#[test]
fn setuid_helper_gains_nothing_seccomp() {
    setuid_helper("seccomp");
}
