//! Process vectors that outlive or kill the agent: `daemonize`, `kill-agent`.

use std::fs;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::args::Args;
use crate::attempt::{Attempt, Steps};
use crate::connect::tcp_connect;

pub(crate) fn write_pidfile(args: &Args) {
    if let Some(p) = args.get("pidfile") {
        // SAFETY: getpid never fails.
        let pid = unsafe { libc::getpid() };
        let tmp = format!("{p}.tmp");
        if fs::write(&tmp, format!("{pid}\n")).is_ok() {
            let _ = fs::rename(&tmp, p);
        }
    }
}

pub(crate) fn devnull_stdio() {
    if let Ok(f) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto standard descriptors.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

/// Returns the grandchild's JSON report (read from a pipe).
pub(crate) fn daemonize(args: &Args, sa: SocketAddr) -> (Attempt, Vec<Value>, Option<i32>) {
    let sleep = args.num::<u64>("sleep", Some(30));
    let mut fds = [0; 2];
    // SAFETY: valid out array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return (Attempt::last_os("pipe"), vec![], None);
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    // SAFETY: the probe is single-threaded here.
    let pid1 = unsafe { libc::fork() };
    if pid1 < 0 {
        return (Attempt::last_os("fork"), vec![], None);
    }
    if pid1 == 0 {
        // Intermediate child.
        // SAFETY: simple syscalls in the child of a single-threaded process.
        unsafe {
            libc::close(rfd);
            libc::setsid();
            let mid = libc::getpid();
            let pid2 = libc::fork();
            if pid2 != 0 {
                libc::_exit(if pid2 < 0 { 1 } else { 0 });
            }
            // Grandchild: wait for the intermediate parent to be gone.
            let start = Instant::now();
            while libc::getppid() == mid && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let reparented = libc::getppid() != mid;
            let a = tcp_connect(sa, 0);
            write_pidfile(args);
            let report = json!({
                "pid": libc::getpid(),
                "ppid": libc::getppid(),
                "reparented": reparented,
                "ok": a.ok, "errno": a.errno, "detail": a.detail,
            });
            let mut w = fs::File::from_raw_fd(wfd);
            let _ = writeln!(w, "{report}");
            drop(w);
            devnull_stdio();
            std::thread::sleep(Duration::from_secs(sleep));
            libc::_exit(0);
        }
    }
    // SAFETY: close our copy of the write end; reap the intermediate child.
    unsafe {
        libc::close(wfd);
        let mut st = 0;
        libc::waitpid(pid1, &mut st, 0);
    }
    // SAFETY: rfd is ours.
    let mut r = unsafe { fs::File::from_raw_fd(rfd) };
    let mut pfd = libc::pollfd {
        fd: rfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 15_000) };
    let mut buf = String::new();
    if n > 0 {
        let _ = r.read_to_string(&mut buf);
    }
    match serde_json::from_str::<Value>(buf.trim()) {
        Ok(v) => {
            let a = Attempt {
                ok: v["ok"].as_bool().unwrap_or(false),
                errno: v["errno"].as_i64().map(|e| e as i32),
                detail: format!("grandchild: {}", v["detail"].as_str().unwrap_or("")),
            };
            let gpid = v["pid"].as_i64().map(|p| p as i32);
            (a, vec![v], gpid)
        }
        Err(_) => (
            Attempt {
                ok: false,
                errno: None,
                detail: format!("grandchild did not report (got {buf:?})"),
            },
            vec![],
            None,
        ),
    }
}

/// From inside the sandbox: SIGKILL the parent (under a privileged agent,
/// the pid namespace's init) and then every process we may signal
/// (`kill(-1)`); wait a little; connect. `--kill-parent 0` / `--kill-all 0`
/// skip a step.
pub(crate) fn kill_agent(
    args: &Args,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    let sa = args.target_sa();
    // SAFETY: plain syscalls.
    let ppid = unsafe { libc::getppid() };
    extra.insert("ppid_before".into(), json!(ppid));
    if args.num::<u8>("kill-parent", Some(1)) == 1 {
        // SAFETY: plain syscall.
        let k = if unsafe { libc::kill(ppid, libc::SIGKILL) } == 0 {
            Attempt::success(format!("kill({ppid}, SIGKILL) returned 0"))
        } else {
            Attempt::last_os(&format!("kill({ppid}, SIGKILL)"))
        };
        steps.push("kill-parent", &k);
    }
    if args.num::<u8>("kill-all", Some(1)) == 1 {
        // SAFETY: plain syscall.
        let k = if unsafe { libc::kill(-1, libc::SIGKILL) } == 0 {
            Attempt::success("kill(-1, SIGKILL) returned 0")
        } else {
            Attempt::last_os("kill(-1, SIGKILL)")
        };
        steps.push("kill-all", &k);
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain syscall.
    extra.insert("ppid_after".into(), json!(unsafe { libc::getppid() }));
    tcp_connect(sa, 0)
}
