//! Host protection battery (issue 9, first part): whatever the enforcer and
//! privilege, a sandbox cannot act on the host outside its own process tree
//! through the kernel's tunables, system files, other processes of the same
//! user, or the caller's terminal.
//!
//! Every vector is first shown to work outside a sandbox (writing a
//! tunable's current value back, a scratch file, a helper process of the
//! same uid, a real pseudo-terminal), then refused inside, with the host
//! side as the oracle (file contents, the terminal's input queue). The
//! over-blocking checks run in the same sandboxes: the working directory and
//! temp dir stay writable, system files readable.
//!
//! Tests are grouped by enforcement (`bpf::`, `seccomp::`, `seccomp_user::`).
//! Needs root and a real kernel. Run with `cargo test -p nono-tests --test host`.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nono_tests::per_enforcement;
use nono_tests::runner::{exec_command, Enforcement, ExecOpts, RunAs};
use nono_tests::sys::{self, CmdOutput, TempDir};

const PYTHON: &str = "/usr/bin/python3";

per_enforcement!(
    bpf,
    super::Enforcement::Bpf,
    [
        command_servers_are_out_of_reach,
        events_file_cannot_be_forged,
        tunables_and_system_files_are_read_only,
        autorun_files_are_read_only,
        protected_directories_cannot_be_moved_away,
        terminal_injection_is_refused,
        other_processes_are_out_of_reach,
        ordinary_files_stay_writable,
    ]
);
per_enforcement!(
    seccomp,
    super::Enforcement::Seccomp,
    [
        command_servers_are_out_of_reach,
        events_file_cannot_be_forged,
        tunables_and_system_files_are_read_only,
        autorun_files_are_read_only,
        protected_directories_cannot_be_moved_away,
        terminal_injection_is_refused,
        other_processes_are_out_of_reach,
        ordinary_files_stay_writable,
    ]
);
per_enforcement!(
    seccomp_user,
    super::Enforcement::SeccompUser,
    [
        command_servers_are_out_of_reach,
        events_file_cannot_be_forged,
        autorun_files_are_read_only,
        protected_directories_cannot_be_moved_away,
        terminal_injection_is_refused,
        other_processes_are_out_of_reach,
        ordinary_files_stay_writable,
    ]
);

fn opts(e: Enforcement) -> ExecOpts {
    ExecOpts {
        enforcer: Some(e.flag().to_string()),
        user: (!e.privileged()).then(RunAs::fresh),
        ..Default::default()
    }
}

/// Runs `python3 -c code args...` in a sandbox under `o`.
fn sandboxed(o: &ExecOpts, code: &str, args: &[&str]) -> CmdOutput {
    sys::require_prereqs();
    let mut cmd = exec_command(&sys::agent_bin(), None, o);
    cmd.args([PYTHON, "-c", code]).args(args);
    sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT)
}

/// Runs `python3 -c code args...` outside any sandbox, as `user` if given.
fn outside(user: Option<RunAs>, code: &str, args: &[&str]) -> CmdOutput {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new(sys::require_tool("setpriv", "runs helpers unprivileged"));
            c.args(u.setpriv_args()).arg(PYTHON);
            c
        }
        None => Command::new(PYTHON),
    };
    cmd.args(["-c", code]).args(args);
    sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT)
}

/// Tries to append `data` to each path given; prints `PATH ok` or
/// `PATH ERRNO` per path.
const APPEND: &str = r#"
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

fn verdicts(out: &CmdOutput) -> Vec<(String, String)> {
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
fn tunables_and_system_files_are_read_only(e: Enforcement) {
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

fn git(dir: &Path, args: &[&str]) -> CmdOutput {
    let mut c = Command::new(sys::require_tool("git", "auto-run file tests"));
    c.current_dir(dir)
        .args(["-c", "user.email=t@example.invalid", "-c", "user.name=t"])
        .args(args);
    let out = sys::run_timeout(&mut c, sys::CMD_TIMEOUT);
    assert_eq!(out.code(), 0, "git {args:?}: {}", out.describe());
    out
}

/// The working directory's repository hooks and configuration and the
/// shell startup files of `$HOME` cannot be written from a root sandbox,
/// while ordinary git work in that repository goes on.
fn autorun_files_are_read_only(e: Enforcement) {
    let o = opts(e);
    let base = TempDir::new("host-autorun");
    let repo = base.path("repo");
    let home = base.path("home");
    fs::create_dir_all(&repo).unwrap();
    fs::create_dir_all(&home).unwrap();
    git(&repo, &["init", "-q", "."]);
    git(&repo, &["commit", "-q", "--allow-empty", "-m", "init"]);
    fs::write(home.join(".bashrc"), "# rc\n").unwrap();
    if let Some(u) = o.user {
        // The unprivileged sandbox's own files: its user could write them.
        let owner = format!("{}:{}", u.uid, u.gid);
        sys::run_ok("chown", &["-R", &owner, base.path("").to_str().unwrap()]);
    }
    let targets = [
        repo.join(".git/hooks/pre-commit"),
        repo.join(".git/config"),
        home.join(".bashrc"),
    ];
    let args: Vec<&str> = std::iter::once("\n# appended\n")
        .chain(targets.iter().map(|p| p.to_str().unwrap()))
        .collect();
    // Outside: each can be written (then put back).
    let saved: Vec<Option<Vec<u8>>> = targets.iter().map(|p| fs::read(p).ok()).collect();
    let out = outside(o.user, APPEND, &args);
    for (p, v) in verdicts(&out) {
        assert_eq!(
            v,
            "ok",
            "outside, {p} should be writable: {}",
            out.describe()
        );
    }
    for (p, s) in targets.iter().zip(&saved) {
        match s {
            Some(b) => fs::write(p, b).unwrap(),
            None => fs::remove_file(p).unwrap(),
        }
    }
    let mut cmd = exec_command(&sys::agent_bin(), None, &o);
    cmd.current_dir(&repo)
        .env("HOME", &home)
        .args([PYTHON, "-c", APPEND])
        .args(&args);
    let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
    let v = verdicts(&out);
    assert_eq!(v.len(), targets.len(), "{}", out.describe());
    for (p, verdict) in v {
        assert_eq!(
            verdict,
            "EROFS",
            "{}: {p} must be read-only: {}",
            e.label(),
            out.describe()
        );
    }
    for (p, s) in targets.iter().zip(&saved) {
        assert_eq!(&fs::read(p).ok(), s, "{} changed", p.display());
    }
    // Ordinary work in the repository.
    let mut cmd = exec_command(&sys::agent_bin(), None, &o);
    cmd.current_dir(&repo).env("HOME", &home).args([
        "sh",
        "-c",
        "echo data > f && git add f && git -c user.email=t@example.invalid -c user.name=t commit -q -m c && git checkout -q -b side && git log --oneline | wc -l",
    ]);
    let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
    assert_eq!(
        out.code(),
        0,
        "{}: git work inside: {}",
        e.label(),
        out.describe()
    );
    assert_eq!(out.stdout.trim(), "2", "{}", out.describe());
}

/// Renames each of `pairs` (from, to), printing `FROM ok` (and renaming it
/// back) or `FROM ERRNO`; then appends to `.git/config` by a path relative
/// to the working directory.
const RENAME: &str = r#"
import os, sys, errno
args = sys.argv[1:]
for a, b in zip(args[::2], args[1::2]):
    try:
        os.rename(a, b)
        os.rename(b, a)
        print(a, "ok")
    except OSError as e:
        print(a, errno.errorcode.get(e.errno, e.errno))
try:
    with open(".git/config", "ab") as f:
        f.write(b"\n# appended\n")
    print("relative", "ok")
except OSError as e:
    print("relative", errno.errorcode.get(e.errno, e.errno))
"#;

/// The directories above protected files cannot be moved aside (a sandbox
/// would make a fresh `.git`, `~/.config` or `$HOME` beside the moved one,
/// whose hooks nothing protects), and a path relative to the working
/// directory meets the same read-only binds as an absolute one.
fn protected_directories_cannot_be_moved_away(e: Enforcement) {
    let o = opts(e);
    let base = TempDir::new("host-rename");
    let repo = base.path("repo");
    let home = base.path("home");
    fs::create_dir_all(&repo).unwrap();
    fs::create_dir_all(home.join(".config/git")).unwrap();
    git(&repo, &["init", "-q", "."]);
    fs::write(home.join(".bashrc"), "# rc\n").unwrap();
    if let Some(u) = o.user {
        let owner = format!("{}:{}", u.uid, u.gid);
        sys::run_ok("chown", &["-R", &owner, base.path("").to_str().unwrap()]);
    }
    let moved = |p: &Path| {
        let mut s = p.as_os_str().to_owned();
        s.push(".moved");
        PathBuf::from(s)
    };
    let dirs = [
        repo.join(".git"),
        home.join(".config"),
        home.clone(),
        repo.clone(),
    ];
    let mut args: Vec<String> = Vec::new();
    for d in &dirs {
        args.push(d.to_str().unwrap().to_string());
        args.push(moved(d).to_str().unwrap().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let config = fs::read(repo.join(".git/config")).unwrap();
    // Outside: every rename works (and is undone), the relative write too.
    let mut cmd = match o.user {
        Some(u) => {
            let mut c = Command::new(sys::require_tool("setpriv", "runs helpers unprivileged"));
            c.args(u.setpriv_args()).arg(PYTHON);
            c
        }
        None => Command::new(PYTHON),
    };
    cmd.current_dir(&repo).args(["-c", RENAME]).args(&args);
    let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
    let v = verdicts(&out);
    assert_eq!(v.len(), dirs.len() + 1, "outside: {}", out.describe());
    assert!(
        v.iter().all(|(_, r)| r == "ok"),
        "outside: {}",
        out.describe()
    );
    fs::write(repo.join(".git/config"), &config).unwrap();

    let mut cmd = exec_command(&sys::agent_bin(), None, &o);
    cmd.current_dir(&repo)
        .env("HOME", &home)
        .args([PYTHON, "-c", RENAME])
        .args(&args);
    let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
    let v = verdicts(&out);
    assert_eq!(v.len(), dirs.len() + 1, "{}", out.describe());
    for (p, verdict) in &v {
        let want = if p == "relative" { "EROFS" } else { "EBUSY" };
        assert_eq!(
            verdict,
            want,
            "{}: {p} must not be movable (or writable): {}",
            e.label(),
            out.describe()
        );
    }
    for d in &dirs {
        assert!(d.is_dir() && !moved(d).exists(), "{} moved", d.display());
    }
    assert_eq!(fs::read(repo.join(".git/config")).unwrap(), config);
}

/// The events file the agent writes during the run is read-only inside:
/// the sandbox cannot forge or erase its own record.
fn events_file_cannot_be_forged(e: Enforcement) {
    let dir = TempDir::new("host-events");
    let mut o = opts(e);
    if let Some(u) = o.user {
        dir.chown(u.uid, u.gid);
    }
    let ev = dir.path("events.jsonl");
    o.events = Some(ev.clone());
    let out = sandboxed(&o, APPEND, &["{\"forged\": true}\n", ev.to_str().unwrap()]);
    assert_eq!(
        verdicts(&out).first().map(|v| v.1.as_str()),
        Some("EROFS"),
        "{}: {}",
        e.label(),
        out.describe()
    );
    let text = fs::read_to_string(&ev).unwrap_or_default();
    assert!(
        !text.contains("forged"),
        "{}: the events file was forged: {text}",
        e.label()
    );
    // Outside, the same user could have written it.
    let out = outside(o.user, APPEND, &["{\"x\": 1}\n", ev.to_str().unwrap()]);
    assert_eq!(
        verdicts(&out).first().map(|v| v.1.as_str()),
        Some("ok"),
        "{}",
        out.describe()
    );
}

/// A tmux server of the sandbox's own user runs whatever a client asks,
/// outside every sandbox: its socket is refused like a container engine's.
fn command_servers_are_out_of_reach(e: Enforcement) {
    let tmux = sys::require_tool("tmux", "a command server of the sandbox's user");
    let o = opts(e);
    let dir = TempDir::new("host-tmux");
    if let Some(u) = o.user {
        dir.chown(u.uid, u.gid);
    }
    let marker = dir.path("ran");
    let name = format!("nono-host-{}-{}", std::process::id(), e.flag());
    let as_user = |args: &[&str]| -> CmdOutput {
        let mut c = match o.user {
            Some(u) => {
                let mut c = Command::new(sys::require_tool("setpriv", "unprivileged tmux"));
                c.args(u.setpriv_args()).arg(&tmux);
                c
            }
            None => Command::new(&tmux),
        };
        c.env("TMUX_TMPDIR", dir.path(""))
            .args(["-L", &name])
            .args(args);
        sys::run_timeout(&mut c, sys::CMD_TIMEOUT)
    };
    let out = as_user(&["new-session", "-d", "sleep 60"]);
    assert_eq!(out.code(), 0, "start tmux: {}", out.describe());
    struct Kill<'a>(&'a dyn Fn(&[&str]) -> CmdOutput);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["kill-server"]);
        }
    }
    let _kill = Kill(&as_user);
    let run = format!("touch {}", marker.display());
    // Outside, a client of the same user makes the server run a command.
    let out = as_user(&["run-shell", &run]);
    assert_eq!(out.code(), 0, "outside: {}", out.describe());
    assert!(
        sys::wait_until(Duration::from_secs(5), || marker.exists()),
        "outside: the server did not run the command"
    );
    fs::remove_file(&marker).unwrap();
    // Inside: refused, nothing runs.
    let mut cmd = exec_command(&sys::agent_bin(), None, &o);
    cmd.env("TMUX_TMPDIR", dir.path(""))
        .arg(&tmux)
        .args(["-L", &name, "run-shell", &run]);
    let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
    assert_ne!(
        out.code(),
        0,
        "{}: tmux inside should fail: {}",
        e.label(),
        out.describe()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !marker.exists(),
        "{}: the tmux server ran a command for the sandbox",
        e.label()
    );
}

/// Writes in the working directory's temp area and reads of system files
/// keep working.
fn ordinary_files_stay_writable(e: Enforcement) {
    let o = opts(e);
    let dir = TempDir::new("host-ordinary");
    if let Some(u) = o.user {
        dir.chown(u.uid, u.gid);
    }
    let f = dir.path("work.txt");
    let code = r#"
import sys
open(sys.argv[1], "w").write("written inside\n")
print(len(open("/etc/hosts").read()) > 0, len(open("/etc/passwd").read()) > 0)
"#;
    let out = sandboxed(&o, code, &[f.to_str().unwrap()]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(out.stdout.trim(), "True True", "{}", out.describe());
    assert_eq!(fs::read_to_string(&f).unwrap(), "written inside\n");
}

/// ptrace, /proc/PID/mem, /proc/PID/environ and signals aimed at a helper
/// process of the sandbox's own uid outside the sandbox.
const PEEK: &str = r#"
import os, sys, ctypes, errno
pid = int(sys.argv[1])
def res(name, f):
    try:
        f(); print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
res("mem", lambda: open(f"/proc/{pid}/mem", "rb").close())
res("environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
def attach():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "ptrace")
    libc.ptrace(17, pid, 0, 0)
res("ptrace", attach)
res("signal", lambda: os.kill(pid, 0))
"#;

fn other_processes_are_out_of_reach(e: Enforcement) {
    let o = opts(e);
    // The helper runs with the sandbox's uid (root for privileged runs).
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
    let mut child = helper.stdin(Stdio::null()).spawn().expect("start helper");
    let pid = child.id().to_string();
    let out = outside(o.user, PEEK, &[&pid]);
    let v = verdicts(&out);
    assert_eq!(v.len(), 4, "{}", out.describe());
    for (what, verdict) in &v {
        assert_eq!(
            verdict,
            "ok",
            "outside, {what} of a same-uid process must work: {}",
            out.describe()
        );
    }
    let out = sandboxed(&o, PEEK, &[&pid]);
    let v = verdicts(&out);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(v.len(), 4, "{}", out.describe());
    for (what, verdict) in &v {
        assert_ne!(
            verdict,
            "ok",
            "{}: {what} of an outside process must be refused: {}",
            e.label(),
            out.describe()
        );
    }
}

/// TIOCSTI into the terminal the sandbox got as its stdin and controlling
/// terminal. The oracle is the terminal's input queue, read by the test
/// from the terminal side after the command ended.
const INJECT: &str = r#"
import fcntl, termios, errno
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"Z")
    print("tiocsti ok")
except OSError as e:
    print("tiocsti", errno.errorcode.get(e.errno, e.errno))
"#;

fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    // SAFETY: out-pointers for two fds; no name, termios or winsize.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two new fds we own.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

/// Runs `cmd` with the pty's slave as stdin and controlling terminal (new
/// session), then returns what is waiting in the terminal's input queue.
fn run_on_pty(mut cmd: Command) -> (CmdOutput, Vec<u8>) {
    let (_master, slave) = open_pty();
    let stdin = slave.try_clone().unwrap();
    // SAFETY: setsid and ioctl are async-signal-safe; the child's fd 0 is
    // the slave.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::from(stdin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {what}: {e}"));
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let status = sys::wait_child(&mut child, sys::CMD_TIMEOUT, &what);
    let (mut stdout, mut stderr) = (String::new(), String::new());
    use std::io::Read as _;
    let _ = so.read_to_string(&mut stdout);
    let _ = se.read_to_string(&mut stderr);
    let out = CmdOutput {
        status,
        stdout,
        stderr,
        pipes_held_open: false,
    };
    let fd = slave.as_raw_fd();
    // SAFETY: termios calls and a non-blocking read on our own slave fd.
    let queued = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(fd, &mut t);
        t.c_lflag &= !libc::ICANON;
        t.c_cc[libc::VMIN] = 0;
        t.c_cc[libc::VTIME] = 0;
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        let mut buf = [0u8; 64];
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        buf[..n.max(0) as usize].to_vec()
    };
    (out, queued)
}

fn terminal_injection_is_refused(e: Enforcement) {
    let o = opts(e);
    // Outside, as the same user: the byte lands in the terminal's queue.
    let mut cmd = match o.user {
        Some(u) => {
            let mut c = Command::new(sys::require_tool("setpriv", "runs helpers unprivileged"));
            c.args(u.setpriv_args()).arg(PYTHON);
            c
        }
        None => Command::new(PYTHON),
    };
    cmd.args(["-c", INJECT]);
    let (out, queued) = run_on_pty(cmd);
    assert_eq!(
        out.stdout.trim(),
        "tiocsti ok",
        "outside: {}",
        out.describe()
    );
    assert_eq!(
        queued, b"Z",
        "outside, the injected byte must reach the terminal"
    );

    let mut cmd = exec_command(&sys::agent_bin(), None, &o);
    cmd.args([PYTHON, "-c", INJECT]);
    let (out, queued) = run_on_pty(cmd);
    assert_eq!(
        out.stdout.trim(),
        "tiocsti EPERM",
        "{}: {}",
        e.label(),
        out.describe()
    );
    assert!(
        queued.is_empty(),
        "{}: bytes reached the caller's terminal: {queued:?}",
        e.label()
    );
    // The sandboxed command still had the terminal as stdin (over-blocking:
    // ordinary terminal ioctls work).
    let mut cmd = exec_command(&sys::agent_bin(), None, &o);
    cmd.args([
        PYTHON,
        "-c",
        "import os, termios; termios.tcgetattr(0); print(os.isatty(0))",
    ]);
    let (out, _) = run_on_pty(cmd);
    assert_eq!(
        out.stdout.trim(),
        "True",
        "{}: {}",
        e.label(),
        out.describe()
    );
}

#[test]
fn host_mounts_are_unchanged_by_a_sandbox() {
    sys::require_prereqs();
    let before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let out = sandboxed(&opts(Enforcement::Bpf), "print('hi')", &[]);
    assert_eq!(out.code(), 0, "{}", out.describe());
    std::thread::sleep(Duration::from_millis(50));
    let after = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(
        before.lines().count(),
        after.lines().count(),
        "mounts leaked to the host"
    );
}

/// A root-only datagram socket, reached by the root seccomp supervisor on
/// behalf of a `--user nobody` sandbox that made a user namespace of its own
/// (where it shows every capability): still refused, nothing delivered.
#[test]
fn supervisor_lends_no_capabilities_to_a_nested_user_namespace() {
    use std::os::unix::net::UnixDatagram;
    sys::require_prereqs();
    let dir = TempDir::new("host-rootonly");
    fs::set_permissions(dir.path(""), fs::Permissions::from_mode(0o700)).unwrap();
    let sock = dir.path("sock");
    let rx = UnixDatagram::bind(&sock).unwrap();
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let code = r#"
import socket, ctypes, sys, errno
libc = ctypes.CDLL(None, use_errno=True)
if sys.argv[2] == "unshare" and libc.unshare(0x10000000) != 0:
    print("unshare failed"); sys.exit(1)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    s.sendto(b"from-sandbox", sys.argv[1]); print("send ok")
except OSError as e:
    print("send", errno.errorcode.get(e.errno, e.errno))
"#;
    // Outside, root reaches it (the oracle works).
    let out = outside(None, code, &[sock.to_str().unwrap(), "plain"]);
    assert_eq!(out.stdout.trim(), "send ok", "{}", out.describe());
    let mut buf = [0u8; 64];
    assert_eq!(rx.recv(&mut buf).unwrap(), 12);
    for how in ["plain", "unshare"] {
        let mut cmd = exec_command(
            &sys::agent_bin(),
            None,
            &ExecOpts {
                enforcer: Some("seccomp".into()),
                ..Default::default()
            },
        );
        // `--user` goes before `--`: rebuild the tail.
        let mut argv: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let dashdash = argv.iter().position(|a| a == "--").unwrap();
        argv.splice(
            dashdash..dashdash,
            ["--user".to_string(), "nobody".to_string()],
        );
        let mut c = Command::new(cmd.get_program());
        c.args(&argv)
            .args([PYTHON, "-c", code, sock.to_str().unwrap(), how]);
        cmd = c;
        let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        assert_eq!(
            out.stdout.trim(),
            "send EACCES",
            "{how}: {}",
            out.describe()
        );
        assert!(
            rx.recv(&mut buf).is_err(),
            "{how}: the root-only socket received the sandbox's message"
        );
    }
}
