//! `cargo xtask bench-pty`: the keystroke echo round trip through the
//! agent's pseudo-terminal relay, side by side with the same program on a
//! terminal directly.
//!
//! The bench opens a pty (the "caller's terminal", raw mode), runs `cat` on
//! it (a) directly, (b) as `nono-agent exec -q -- cat` (which then runs cat
//! on a pty of its own and relays), and times write-one-byte → read-it-back
//! on the master, one byte at a time. Figures are printed, never asserted.

use anyhow::{bail, Context as _, Result};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut keystrokes: usize = 2_000;
    let mut agent: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--keystrokes" => keystrokes = it.next().context("--keystrokes N")?.parse()?,
            "--agent" => agent = Some(it.next().context("--agent PATH")?.into()),
            other => bail!("unknown bench-pty option {other} (--keystrokes N, --agent PATH)"),
        }
    }
    let agent = match agent {
        Some(a) => a,
        None => {
            let status = Command::new("cargo")
                .args(["build", "--release", "-p", "nono-agent"])
                .current_dir(root)
                .status()?;
            if !status.success() {
                bail!("release build failed");
            }
            root.join("target/release/nono-agent")
        }
    };
    let cat = "/bin/cat";
    println!("== keystroke echo round trip: {keystrokes} single bytes, raw mode ==");
    let plain = round_trips(Command::new(cat), keystrokes)?;
    let mut relayed = Command::new(&agent);
    relayed.args(["exec", "-q", "--", cat]);
    let relayed = round_trips(relayed, keystrokes)?;
    for (name, v) in [
        ("cat on a pty", plain),
        ("nono-agent exec -q -- cat", relayed),
    ] {
        let s = Stats::of(v);
        println!(
            "{name:<28} p50 {:>9.2?}  p99 {:>9.2?}  mean {:>9.2?}  max {:>9.2?}  >10ms {}",
            s.p50, s.p99, s.mean, s.max, s.slow
        );
    }
    Ok(())
}

struct Stats {
    /// Round trips over 10 ms.
    slow: usize,
    p50: Duration,
    p99: Duration,
    mean: Duration,
    max: Duration,
}

impl Stats {
    fn of(mut v: Vec<Duration>) -> Self {
        v.sort();
        let n = v.len().max(1);
        let at = |q: usize| v.get((n * q / 100).min(n - 1)).copied().unwrap_or_default();
        Self {
            slow: v.iter().filter(|d| **d > Duration::from_millis(10)).count(),
            p50: at(50),
            p99: at(99),
            mean: v.iter().sum::<Duration>() / n as u32,
            max: v.last().copied().unwrap_or_default(),
        }
    }
}

fn open_raw_pty() -> Result<(OwnedFd, OwnedFd)> {
    let (m, s) = nono_tests::sys::open_pty().context("openpty")?;
    // SAFETY: termios calls on our own slave.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(s.as_raw_fd(), &mut t);
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(s.as_raw_fd(), libc::TCSANOW, &t);
    }
    Ok((m, s))
}

/// One byte to the master, then waits for a byte back (5 s at most).
fn echo_once(master: i32, byte: u8) -> Result<Duration> {
    let t = Instant::now();
    // SAFETY: one byte from a stack buffer.
    if unsafe { libc::write(master, [byte].as_ptr().cast(), 1) } != 1 {
        bail!("write to the pty: {}", std::io::Error::last_os_error());
    }
    let mut p = libc::pollfd {
        fd: master,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, 5_000) } != 1 {
        bail!("no echo within 5 s");
    }
    let mut b = [0u8; 16];
    // SAFETY: reads into a stack buffer of that length.
    let n = unsafe { libc::read(master, b.as_mut_ptr().cast(), b.len()) };
    if n < 1 {
        bail!("read from the pty: {}", std::io::Error::last_os_error());
    }
    Ok(t.elapsed())
}

/// Runs `cmd` on a fresh raw pty (new session, the slave as its terminal)
/// and times `n` echoes after a warm-up.
fn round_trips(mut cmd: Command, n: usize) -> Result<Vec<Duration>> {
    let (master, slave) = open_raw_pty()?;
    // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the slave.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let m = master.as_raw_fd();
    let mut out = Vec::with_capacity(n);
    let mut result = Ok(());
    for i in 0..(n + 50) {
        match echo_once(m, b'a' + (i % 26) as u8) {
            // The first 50 warm up (and wait for the command to start).
            Ok(d) if i >= 50 => out.push(d),
            Ok(_) => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // SAFETY: SIGTERM to the child we started (the agent forwards it).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    result.map(|()| out)
}
