//! The sandbox's own pid namespace (privileged, and unprivileged where a
//! user namespace can be made): another process of the sandbox's uid is
//! neither listed in /proc nor reachable by pid, the command sees itself
//! with a small pid, and ordinary process work (pipelines, background
//! jobs, a `ps`-like /proc listing, exit codes) still works.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

use nono_tests::runner::Enforcement;
use nono_tests::sys;

use super::files::verdicts;
use super::{opts, outside, sandboxed};

/// What `/proc` and `kill(pid, 0)` say about the helper `argv[1]`, and
/// the caller's own pid as it sees it.
const LOOK: &str = r#"
import os, sys, errno
pid = int(sys.argv[1])
print("proc", "visible" if os.path.exists(f"/proc/{pid}") else "hidden")
try:
    os.kill(pid, 0); print("signal ok")
except OSError as e:
    print("signal", errno.errorcode.get(e.errno, e.errno))
print("self", os.getpid())
nspid = [l for l in open("/proc/self/status") if l.startswith("NSpid:")][0].split()[1:]
print("nspid", ",".join(nspid))
print("listed", ",".join(sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int)))
"#;

fn field<'a>(v: &'a [(String, String)], name: &str) -> &'a str {
    v.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

pub(super) fn other_processes_are_invisible(e: Enforcement) {
    let o = opts(e);
    let mut helper = match o.user {
        Some(u) => {
            let mut c = Command::new(sys::require_tool("setpriv", "runs helpers unprivileged"));
            c.args(u.setpriv_args()).args(["sleep", "30"]);
            c
        }
        None => {
            let mut c = Command::new("sleep");
            c.arg("30");
            c
        }
    };
    // SAFETY: setsid in the forked helper before exec, async-signal-safe.
    unsafe {
        helper.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = helper.stdin(Stdio::null()).spawn().expect("start helper");
    let pid = child.id().to_string();
    let out = outside(o.user, LOOK, &[&pid]);
    let v = verdicts(&out);
    assert_eq!(field(&v, "proc"), "visible", "outside: {}", out.describe());
    assert_eq!(field(&v, "signal"), "ok", "outside: {}", out.describe());
    let out = sandboxed(&o, LOOK, &[&pid]);
    let _ = child.kill();
    let _ = child.wait();
    let v = verdicts(&out);
    let label = e.label();
    assert_eq!(
        field(&v, "proc"),
        "hidden",
        "{label}: /proc/{pid} inside: {}",
        out.describe()
    );
    assert_eq!(
        field(&v, "signal"),
        "ESRCH",
        "{label}: kill({pid}, 0) inside: {}",
        out.describe()
    );
    let me: i32 = field(&v, "self").parse().unwrap_or(0);
    assert!(
        (1..=3).contains(&me),
        "{label}: the command's own pid: {}",
        out.describe()
    );
    assert_eq!(
        field(&v, "nspid"),
        me.to_string(),
        "{label}: NSpid in the sandbox's /proc: {}",
        out.describe()
    );
    let listed: Vec<i32> = field(&v, "listed")
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        listed.contains(&1) && listed.contains(&me) && listed.iter().all(|&p| p <= 10),
        "{label}: /proc lists the sandbox's processes only: {}",
        out.describe()
    );
}

/// A shell pipeline with a background job, a `ps`-like listing of the
/// sandbox's /proc, `kill` of its own job and exit codes.
const WORK: &str = r#"
import subprocess
script = r'''
sleep 30 &
job=$!
# The job may not have exec'd sleep yet (its comm is still sh): look again
# for up to 5 s.
for i in $(seq 50); do
  names=$(cat /proc/[0-9]*/comm 2>/dev/null | sort | tr '\n' ' ')
  echo "names $names" | grep -q sleep && { echo "listing ok"; break; }
  sleep 0.1
done
kill -0 $job && echo "job ok"
kill $job; wait $job; echo "killed $?"
printf 'a\nb\nc\n' | grep -v b | wc -l | sed 's/^/lines /'
(exit 7); echo "status $?"
exit 5
'''
r = subprocess.run(["sh", "-c", script])
print("code", r.returncode)
"#;

pub(super) fn process_work_still_works(e: Enforcement) {
    let o = opts(e);
    let out = sandboxed(&o, WORK, &[]);
    let v = verdicts(&out);
    let label = e.label();
    for (k, want) in [
        ("listing", "ok"),
        ("job", "ok"),
        ("killed", "143"),
        ("lines", "2"),
        ("status", "7"),
        ("code", "5"),
    ] {
        assert_eq!(field(&v, k), want, "{label}: {k}: {}", out.describe());
    }
    assert_eq!(out.code(), 0, "{label}: {}", out.describe());
}

/// Runs `argv[3:]` in a new user namespace (mapping root and the uid and
/// gid `argv[1]`, `argv[2]`) in which no further user namespace may be
/// made (`max_user_namespaces` 0): a host without unprivileged user
/// namespaces, for the processes below it only.
const NO_USERNS: &str = r#"
import os, sys, ctypes
libc = ctypes.CDLL(None, use_errno=True)
uid, gid = sys.argv[1], sys.argv[2]
r, w = os.pipe(); r2, w2 = os.pipe()
pid = os.fork()
if pid == 0:
    if libc.unshare(0x10000000) != 0:
        os._exit(99)
    os.write(w, b"x"); os.read(r2, 1)
    open("/proc/sys/user/max_user_namespaces", "w").write("0")
    os.execv(sys.argv[3], sys.argv[3:])
os.read(r, 1)
open(f"/proc/{pid}/uid_map", "w").write(f"0 0 1\n{uid} {uid} 1\n")
open(f"/proc/{pid}/gid_map", "w").write(f"0 0 1\n{gid} {gid} 1\n")
os.write(w2, b"g")
_, st = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(st))
"#;

/// Where no user namespace can be made, an unprivileged sandbox is refused
/// (naming `--allow-degraded`); with `--allow-degraded` it runs with a
/// warning, and without a pid namespace it sees the user's other processes
/// (as the README's Limits say).
#[test]
fn without_user_namespaces_degrades_only_on_request() {
    use nono_tests::runner::{exec_command, ExecOpts, RunAs};
    sys::require_prereqs();
    let u = RunAs::fresh();
    let mut helper = Command::new(sys::require_tool("setpriv", "runs helpers unprivileged"));
    let mut child = helper
        .args(u.setpriv_args())
        .args(["sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start helper");
    let pid = child.id().to_string();
    let run = |degraded: bool| {
        let o = ExecOpts {
            enforcer: Some(Enforcement::SeccompUser.flag().to_string()),
            user: Some(u),
            extra: if degraded {
                vec!["--allow-degraded".into()]
            } else {
                Vec::new()
            },
            ..Default::default()
        };
        let mut inner = exec_command(&sys::agent_bin(), None, &o);
        inner.args([super::PYTHON, "-c", LOOK, &pid]);
        let mut cmd = Command::new(super::PYTHON);
        cmd.args(["-c", NO_USERNS, &u.uid.to_string(), &u.gid.to_string()])
            .arg(inner.get_program())
            .args(inner.get_args());
        sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT)
    };
    let refused = run(false);
    let degraded = run(true);
    let _ = child.kill();
    let _ = child.wait();
    assert_ne!(refused.code(), 0, "{}", refused.describe());
    assert!(
        refused.stderr.contains("no user namespace") && refused.stderr.contains("--allow-degraded"),
        "refusal must name the missing user namespace: {}",
        refused.describe()
    );
    assert!(
        !refused.stdout.contains("proc "),
        "the command must not run: {}",
        refused.describe()
    );
    assert_eq!(degraded.code(), 0, "{}", degraded.describe());
    assert!(
        degraded.stderr.contains("without a pid namespace"),
        "the warning must say the pid namespace is missing: {}",
        degraded.describe()
    );
    let v = verdicts(&degraded);
    assert_eq!(
        field(&v, "proc"),
        "visible",
        "degraded: no pid namespace, the helper is listed: {}",
        degraded.describe()
    );
}
