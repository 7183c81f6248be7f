//! Denial notices: on a terminal (stderr a pty), one line per new denied
//! destination, de-duplicated, escaped, bounded with an "N more" line;
//! nothing without a terminal; nothing with `-q`.

use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use nono_tests::netns::SERVER_V4;
use nono_tests::runner::{Enforcement, ExecOpts, Harness};
use nono_tests::sys;

use super::PROBE;

/// The sandboxed workload: the same direct connect twice, a burst of 40
/// (`burst`) distinct refused ports, CONNECTs for a name no rule allows (twice) and
/// for names carrying a bidi override and an escape sequence (the proxy
/// answers those 400 today; whatever reaches the terminal must be escaped).
fn workload(port: u16, first: u16, burst: u16) -> String {
    format!(
        r#"
import os, socket, base64, urllib.parse
def tcp(port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("{SERVER_V4}", port))
    except OSError:
        pass
    s.close()
tcp({port}); tcp({port})
for p in range({first}, {first} + {burst}):
    tcp(p)
u = urllib.parse.urlparse(os.environ["HTTPS_PROXY"])
auth = base64.b64encode(("%s:%s" % (u.username, u.password)).encode()).decode()
def connect(host):
    s = socket.create_connection((u.hostname, u.port), timeout=5)
    req = "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n" % (host, host, auth)
    s.sendall(req.encode("utf-8"))
    try:
        s.recv(200)
    except OSError:
        pass
    s.close()
connect("evil.test:443"); connect("evil.test:443")
connect("ev\u202eil.test:443")
connect("ev\x1b]0;pwned\x07il.test:443")
print("workload done")
"#
    )
}

/// Runs the workload with stderr on a pty (or a pipe); returns the agent's
/// stderr bytes and its stdout.
fn run(h: &Harness, opts: &ExecOpts, tty: bool, script: &str) -> (Vec<u8>, String) {
    run_on(h, opts, if tty { Term::Stderr } else { Term::None }, script)
}

/// Which of the agent's descriptors are the terminal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Term {
    None,
    /// stderr only (no relay: the terminal keeps its modes).
    Stderr,
    /// stdin and stderr: the agent relays through a pty of the command's
    /// own and puts this terminal in raw mode meanwhile.
    StdinAndStderr,
}

fn run_on(h: &Harness, opts: &ExecOpts, term: Term, script: &str) -> (Vec<u8>, String) {
    let mut cmd = h.agent_command(opts);
    cmd.args(["/usr/bin/python3", "-c", script]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let reader = if term != Term::None {
        let (master, slave): (OwnedFd, OwnedFd) = sys::open_pty().expect("openpty");
        if term == Term::StdinAndStderr {
            use std::os::unix::process::CommandExt as _;
            cmd.stdin(Stdio::from(slave.try_clone().expect("dup slave")));
            // The terminal as the agent's controlling terminal, its
            // process group in the foreground: as from an interactive shell.
            // SAFETY: async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.stderr(Stdio::from(slave));
        Some(std::thread::spawn(move || {
            let mut f = std::fs::File::from(master);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // EIO once every slave descriptor is closed.
            while let Ok(n) = f.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf
        }))
    } else {
        cmd.stderr(Stdio::piped());
        None
    };
    let mut child = cmd.spawn().expect("spawn the agent");
    drop(cmd);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    let mut err = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut err).expect("read stderr");
    }
    let status = sys::wait_child(&mut child, sys::CMD_TIMEOUT, "the agent");
    assert!(
        status.success(),
        "agent: {status:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&err)
    );
    if let Some(r) = reader {
        err = r.join().expect("pty reader");
    }
    (err, stdout)
}

pub(crate) fn notices_on_a_terminal(e: Enforcement) {
    let h = Harness::new(PROBE);
    let port = h.fx.port();
    h.oracle.listen_tcp(port);
    let first = h.fx.port();
    for _ in 0..40 {
        h.fx.port();
    }
    // The target is reachable outside (so the denial is the enforcer's).
    let (r, out) = h.probe_outside(&[
        "tcp4".into(),
        "--target".into(),
        SERVER_V4.to_string(),
        "--port".into(),
        port.to_string(),
    ]);
    assert!(r.ok, "not reachable outside: {}", out.describe());
    h.oracle.settle();
    assert!(
        sys::wait_until(std::time::Duration::from_secs(5), || h
            .oracle
            .tcp_connections(port)
            > 0),
        "the test host did not see the connection made outside"
    );
    let opts = ExecOpts {
        extra: vec!["--allow-domain".into(), "allowed.test".into()],
        ..h.opts(e)
    };
    let script = workload(port, first, 40);
    let before = h.oracle.tcp_connections(port);

    let (raw, stdout) = run(&h, &opts, true, &script);
    assert!(stdout.contains("workload done"), "{stdout}");
    // On a terminal each line of the agent starts with its reset (a
    // command can leave the terminal hiding text); past that, nothing
    // may be a control byte.
    assert!(
        String::from_utf8_lossy(&raw).contains(&format!("{RESET}nono-agent: denied ")),
        "no reset before the notices: {:?}",
        String::from_utf8_lossy(&raw)
    );
    let err = without_reset(&raw);
    h.oracle.settle();
    assert_eq!(
        h.oracle.tcp_connections(port),
        before,
        "a denied connect got through"
    );
    let text = String::from_utf8_lossy(&err).into_owned();
    // Nothing the sandbox chose reaches the terminal raw.
    assert!(
        !err.iter().any(|&b| b == 0x1b || b == 0x07 || b >= 0x80),
        "control or non-ASCII bytes on the terminal: {text:?}"
    );
    let lines: Vec<&str> = text.split('\n').map(|l| l.trim_end_matches('\r')).collect();
    let notices: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("nono-agent: denied "))
        .collect();
    let direct = format!("nono-agent: denied connect to {SERVER_V4}:{port} (not in allowlist)");
    assert_eq!(
        lines.iter().filter(|l| **l == direct).count(),
        1,
        "{e:?}: one notice for two identical denials: {text}"
    );
    assert_eq!(notices.len(), 20, "{e:?}: at most 20 notices: {text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("nono-agent: ")
                && l.contains("more denied destination(s) not shown")),
        "{e:?}: no `N more` line: {text}"
    );
    // Another run without the port burst shows the proxy denials.
    let quiet_script = workload(port, first, 0);
    let (raw, _) = run(&h, &opts, true, &quiet_script);
    let err = without_reset(&raw);
    let text = String::from_utf8_lossy(&err).into_owned();
    assert!(
        !err.iter().any(|&b| b == 0x1b || b == 0x07 || b >= 0x80),
        "control or non-ASCII bytes on the terminal: {text:?}"
    );
    assert_eq!(
        text.matches("nono-agent: denied CONNECT evil.test:443 (not in allowlist)")
            .count(),
        1,
        "{e:?}: {text}"
    );
    // Without a terminal: nothing new on stderr.
    let (err, _) = run(&h, &opts, false, &quiet_script);
    let text = String::from_utf8_lossy(&err).into_owned();
    assert!(
        !text.contains("nono-agent: denied"),
        "{e:?}: notices without a terminal: {text}"
    );
    assert!(text.contains("nono-agent: sandbox "), "{text}");
    // With -q: nothing either.
    let q = ExecOpts {
        quiet: true,
        ..opts.clone()
    };
    let (err, _) = run(&h, &q, true, &quiet_script);
    let text = String::from_utf8_lossy(&err).into_owned();
    assert!(
        !text.contains("nono-agent: denied"),
        "{e:?}: notices with -q: {text}"
    );
    // Through the relay the terminal is raw (no CR added): each notice
    // still starts a line of its own (CR LF).
    let (raw, _) = run_on(&h, &opts, Term::StdinAndStderr, &quiet_script);
    let text = String::from_utf8_lossy(&without_reset(&raw)).into_owned();
    assert!(
        text.contains(&format!("{direct}\r\n")) && !text.contains(&format!("{direct}\r\r")),
        "{e:?}: notice not ended by CR LF on a raw terminal: {text:?}"
    );
    // --notices always without a terminal.
    let mut a = opts.clone();
    a.extra.extend(["--notices".into(), "always".into()]);
    let (err, _) = run(&h, &a, false, &quiet_script);
    let text = String::from_utf8_lossy(&err).into_owned();
    assert!(text.contains(&direct), "{e:?}: --notices always: {text}");
}

/// What the agent writes before each line on a terminal
/// (`notice::TERMINAL_RESET`: CAN, ST, SGR 0).
const RESET: &str = "\x18\x1b\\\x1b[0m";

/// The terminal output without the agent's own resets.
fn without_reset(b: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(b).replace(RESET, "").into_bytes()
}
