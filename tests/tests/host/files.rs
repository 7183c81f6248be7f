//! Kernel tunables and system files are read-only; the Python snippets
//! that write and the scratch files they act on.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nono_tests::runner::{exec_command, Enforcement};
use nono_tests::sys::{self, CmdOutput, TempDir};

use super::{opts, outside, sandboxed, PYTHON};

/// Tries to append `data` to each path given; prints `PATH ok` or
/// `PATH ERRNO` per path.
pub(super) const APPEND: &str = r#"
import sys, errno
data = sys.argv[1].encode()
for p in sys.argv[2:]:
    try:
        with open(p, "ab") as f:
            f.write(data)
        print(p, "ok")
    except OSError as e:
        print(p, errno.errorcode.get(e.errno, e.errno))
"#;

/// Writes each tunable's current value back; prints `PATH ok` or the errno.
const WRITE_BACK: &str = r#"
import sys, errno
for p in sys.argv[1:]:
    try:
        v = open(p, "rb").read()
        with open(p, "wb") as f:
            f.write(v)
        print(p, "ok")
    except OSError as e:
        print(p, errno.errorcode.get(e.errno, e.errno))
"#;

pub(super) fn verdicts(out: &CmdOutput) -> Vec<(String, String)> {
    out.stdout
        .lines()
        .filter_map(|l| {
            let (p, v) = l.rsplit_once(' ')?;
            Some((p.to_string(), v.to_string()))
        })
        .collect()
}

/// Scratch files in protected system directories, removed on drop.
struct Scratch(Vec<PathBuf>);

impl Scratch {
    fn new(dirs: &[&str]) -> Scratch {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "nono-host-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut v = Vec::new();
        for d in dirs {
            if !Path::new(d).is_dir() {
                panic!("{d} does not exist on this machine: the test needs it");
            }
            let p = Path::new(d).join(&tag);
            fs::write(&p, b"original\n").unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
            v.push(p);
        }
        Scratch(v)
    }

    fn args(&self) -> Vec<&str> {
        self.0.iter().map(|p| p.to_str().unwrap()).collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

const TUNABLES: &[&str] = &[
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/core_uses_pid",
    "/proc/sys/net/ipv4/ip_forward",
    "/sys/kernel/mm/ksm/run",
];

/// As root the sandbox is uid 0 without capabilities, which still owns
/// these files: the read-only binds are what refuses the writes.
pub(super) fn tunables_and_system_files_are_read_only(e: Enforcement) {
    // Outside: root can write every tunable back and append to scratch
    // files in every protected directory.
    let out = outside(None, WRITE_BACK, TUNABLES);
    for (p, v) in verdicts(&out) {
        assert_eq!(
            v,
            "ok",
            "outside, {p} should be writable by root: {}",
            out.describe()
        );
    }
    let scratch = Scratch::new(&["/etc", "/usr/local", "/var/lib", "/opt", "/run"]);
    let mut args = vec!["appended\n"];
    args.extend(scratch.args());
    let before: Vec<String> = scratch
        .0
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    let out = outside(None, APPEND, &args);
    for (p, v) in verdicts(&out) {
        assert_eq!(
            v,
            "ok",
            "outside, {p} should be writable: {}",
            out.describe()
        );
    }
    for (p, b) in scratch.0.iter().zip(&before) {
        fs::write(p, b).unwrap();
    }

    let o = opts(e);
    let out = sandboxed(&o, WRITE_BACK, TUNABLES);
    let v = verdicts(&out);
    assert_eq!(v.len(), TUNABLES.len(), "{}", out.describe());
    for (p, verdict) in v {
        assert_eq!(
            verdict,
            "EROFS",
            "{}: {p} must be read-only: {}",
            e.label(),
            out.describe()
        );
    }
    let out = sandboxed(&o, APPEND, &args);
    let v = verdicts(&out);
    assert_eq!(v.len(), scratch.0.len(), "{}", out.describe());
    for (p, verdict) in v {
        assert_eq!(
            verdict,
            "EROFS",
            "{}: {p} must be read-only: {}",
            e.label(),
            out.describe()
        );
    }
    for (p, b) in scratch.0.iter().zip(&before) {
        assert_eq!(
            &fs::read_to_string(p).unwrap(),
            b,
            "{} changed",
            p.display()
        );
    }
    // Ordinary runtime files stay writable: lock files in /run/lock.
    let lock = format!("/run/lock/nono-host-test-{}", std::process::id());
    let out = sandboxed(&o, APPEND, &["x", &lock]);
    let _ = fs::remove_file(&lock);
    assert_eq!(
        verdicts(&out),
        vec![(lock.clone(), "ok".to_string())],
        "{}: /run/lock must stay writable: {}",
        e.label(),
        out.describe()
    );
    // The agent's own binary cannot be replaced (it is a mount point in the
    // sandbox): shown on a copy of the agent, which runs this sandbox.
    let dir = TempDir::new("host-agent-copy");
    let copy = dir.path("nono-agent");
    fs::copy(sys::agent_bin(), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    let original = fs::read(&copy).unwrap();
    let replace = r#"
import os, sys, errno
open(sys.argv[1], "w").write("junk")
try:
    os.replace(sys.argv[1], sys.argv[2]); print(sys.argv[2], "ok")
except OSError as e:
    print(sys.argv[2], errno.errorcode.get(e.errno, e.errno))
"#;
    let spare = dir.path("nono-agent-spare");
    fs::copy(&copy, &spare).unwrap();
    let junk = dir.path("junk");
    let out = outside(
        None,
        replace,
        &[junk.to_str().unwrap(), spare.to_str().unwrap()],
    );
    assert_eq!(
        verdicts(&out).first().map(|v| v.1.as_str()),
        Some("ok"),
        "outside: {}",
        out.describe()
    );
    let mut cmd = exec_command(&copy, None, &o);
    cmd.args([
        PYTHON,
        "-c",
        replace,
        junk.to_str().unwrap(),
        copy.to_str().unwrap(),
    ]);
    let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
    let v = verdicts(&out);
    assert!(
        matches!(v.first().map(|v| v.1.as_str()), Some("EBUSY" | "EROFS")),
        "{}: the agent binary must not be replaceable: {}",
        e.label(),
        out.describe()
    );
    assert_eq!(
        fs::read(&copy).unwrap(),
        original,
        "the agent binary changed"
    );
}
