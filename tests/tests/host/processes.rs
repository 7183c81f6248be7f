//! Other processes of the same uid and the caller's terminal are out of
//! reach (ptrace, /proc/PID/mem, signals, TIOCSTI).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nono_tests::runner::{exec_command, Enforcement};
use nono_tests::sys::{self, CmdOutput};

use super::files::verdicts;
use super::{opts, outside, sandboxed, PYTHON};

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

pub(super) fn other_processes_are_out_of_reach(e: Enforcement) {
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
/// terminal (its own pseudo-terminal, relayed by the agent). The oracle is
/// the caller's terminal's input queue, read by the test from the terminal
/// side after the command ended.
const INJECT: &str = r#"
import fcntl, termios, errno
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"Z")
    print("tiocsti ok")
except OSError as e:
    print("tiocsti", errno.errorcode.get(e.errno, e.errno))
"#;

fn open_pty() -> (OwnedFd, OwnedFd) {
    sys::open_pty().expect("openpty")
}

/// The name of the terminal `fd` is (`/dev/pts/N`).
fn tty_name(fd: &OwnedFd) -> String {
    let mut buf = [0u8; 128];
    // SAFETY: ttyname_r writes a NUL-terminated name into the buffer.
    let r = unsafe { libc::ttyname_r(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(r, 0, "ttyname_r");
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Runs `cmd` with the pty's slave as stdin and controlling terminal (new
/// session), then returns what is waiting in the terminal's input queue.
fn run_on_pty(cmd: Command) -> (CmdOutput, Vec<u8>) {
    let (out, queued, _) = run_on_named_pty(cmd);
    (out, queued)
}

/// [`run_on_pty`], also returning the terminal's name.
fn run_on_named_pty(mut cmd: Command) -> (CmdOutput, Vec<u8>, String) {
    let (_master, slave) = open_pty();
    let name = tty_name(&slave);
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
    (out, queued, name)
}

pub(super) fn terminal_injection_is_refused(e: Enforcement) {
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
    // The sandboxed command still has a terminal as stdin (over-blocking:
    // ordinary terminal ioctls work, its name resolves), but its own
    // pseudo-terminal, not the caller's: even an allowed TIOCSTI would only
    // reach that one.
    let mut cmd = exec_command(&sys::agent_bin(), None, &o);
    cmd.args([
        PYTHON,
        "-c",
        "import os, termios; termios.tcgetattr(0); print(os.isatty(0), os.ttyname(0)); \
         fds = os.listdir('/proc/self/fd'); \
         print(*[os.readlink(f'/proc/self/fd/{f}') for f in fds if os.path.exists(f'/proc/self/fd/{f}')])",
    ]);
    let (out, _, outer) = run_on_named_pty(cmd);
    let mut lines = out.stdout.lines();
    let (first, fds) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    // No pty master (ptmx) among the command's descriptors.
    assert!(
        !fds.is_empty() && !fds.contains("ptmx"),
        "{}: descriptors {fds:?}: {}",
        e.label(),
        out.describe()
    );
    let inner = first
        .trim()
        .strip_prefix("True ")
        .unwrap_or_else(|| panic!("{}: no terminal as stdin: {}", e.label(), out.describe()));
    assert!(
        inner.starts_with("/dev/pts/") && inner != outer,
        "{}: the command's terminal {inner:?} must be its own, not the caller's {outer:?}",
        e.label()
    );
}
