//! Paths a sandbox must not change (autorun files, protected directories,
//! the events file, command servers) and the ordinary files that must stay
//! writable.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nono_tests::runner::{exec_command, Enforcement};
use nono_tests::sys::{self, CmdOutput, TempDir};

use super::files::{verdicts, APPEND};
use super::{opts, outside, sandboxed, PYTHON};

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
pub(super) fn autorun_files_are_read_only(e: Enforcement) {
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
pub(super) fn protected_directories_cannot_be_moved_away(e: Enforcement) {
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
pub(super) fn events_file_cannot_be_forged(e: Enforcement) {
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
pub(super) fn command_servers_are_out_of_reach(e: Enforcement) {
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
pub(super) fn ordinary_files_stay_writable(e: Enforcement) {
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

/// A command server that goes away while a sandbox starts is no reason to
/// refuse the start: the agent lists the sockets to hide before the child
/// mounts over them, and a server exiting (its socket file removed) in
/// between left the child failing with ENOENT. Here a tmux-style server in
/// `$TMUX_TMPDIR` comes and goes every few milliseconds while sandboxes
/// start one after another; every one must run (and the socket, when it is
/// there, is still hidden: that side is `command_servers_are_out_of_reach`).
pub(super) fn a_server_leaving_during_start_up_is_no_error(e: Enforcement) {
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    sys::require_prereqs();
    let agent = sys::agent_bin();
    let o = opts(e);
    let dir = TempDir::new("host-leaving");
    let uid = o.user.map_or(0, |u| u.uid);
    let servers = dir.path(&format!("tmux-{uid}"));
    fs::create_dir(&servers).unwrap();
    if let Some(u) = o.user {
        dir.chown(u.uid, u.gid);
        std::os::unix::fs::chown(&servers, Some(u.uid), Some(u.gid)).unwrap();
    }
    let socket = servers.join("default");
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, socket) = (stop.clone(), socket.clone());
        std::thread::spawn(move || {
            let mut cycles = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let Ok(l) = UnixListener::bind(&socket) else {
                    break;
                };
                std::thread::sleep(Duration::from_millis(2));
                let _ = fs::remove_file(&socket);
                drop(l);
                std::thread::sleep(Duration::from_millis(1));
                cycles += 1;
            }
            cycles
        })
    };
    let mut failures = Vec::new();
    for _ in 0..40 {
        let mut cmd = exec_command(&agent, None, &o);
        cmd.env("TMUX_TMPDIR", dir.path("")).arg("/bin/true");
        let out = sys::run_timeout(&mut cmd, sys::CMD_TIMEOUT);
        if out.code() != 0 {
            failures.push(out.describe());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let cycles = churn.join().unwrap();
    assert!(cycles > 40, "the server came and went only {cycles} times");
    assert!(
        failures.is_empty(),
        "{}: {} of 40 starts failed; first: {}",
        e.label(),
        failures.len(),
        failures[0]
    );
}
