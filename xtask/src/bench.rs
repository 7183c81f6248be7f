//! `cargo xtask bench`: what the sandbox costs, measured side by side.
//!
//! 1. Start-up: wall time of `nono-agent exec -q -- true` vs `true`.
//! 2. Per connection: a loop of loopback `connect()` + `close()` inside a
//!    sandbox vs outside, same binary, same listener, same run.
//! 3. The daemon (`bench_daemon`, as root): start-up through it vs the
//!    other ways, its memory with N live sandboxes, connect through it.
//!    `--only daemon` runs this part alone.
//!
//! Figures are printed, never asserted: they vary with the machine.

use anyhow::{bail, Context as _, Result};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

struct Stats {
    mean: Duration,
    p50: Duration,
    p95: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let n = v.len().max(1);
    let total: Duration = v.iter().sum();
    Stats {
        mean: total / n as u32,
        p50: v[n / 2],
        p95: v[(n * 95 / 100).min(n - 1)],
    }
}

fn time_command(cmd: &mut Command, runs: usize) -> Result<Stats> {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
        v.push(t.elapsed());
        if !st.success() {
            bail!("{cmd:?} failed: {st}");
        }
    }
    Ok(stats(v))
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut iterations: usize = 20_000;
    let mut runs: usize = 100;
    let mut only_daemon = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--iterations" => iterations = it.next().context("--iterations N")?.parse()?,
            "--runs" => runs = it.next().context("--runs N")?.parse()?,
            "--only" => match it.next().map(String::as_str) {
                Some("daemon") => only_daemon = true,
                _ => bail!("--only daemon"),
            },
            other => bail!("unknown bench option {other}"),
        }
    }
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "nono-agent", "-p", "xtask"])
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("release build failed");
    }
    if only_daemon {
        return crate::bench_daemon::run(root, runs, iterations);
    }
    let agent = root.join("target/release/nono-agent");
    let xtask = root.join("target/release/xtask");
    let true_bin = "/bin/true";

    println!("== start-up: {runs} runs each ==");
    // Warm caches (page cache, BPF feature probes' first-run costs).
    let _ = time_command(Command::new(&agent).args(["exec", "-q", "--", true_bin]), 5)?;
    let plain = time_command(&mut Command::new(true_bin), runs)?;
    let sandboxed = time_command(
        Command::new(&agent).args(["exec", "-q", "--", true_bin]),
        runs,
    )?;
    println!(
        "true                      mean {:>9.2?}  p50 {:>9.2?}  p95 {:>9.2?}",
        plain.mean, plain.p50, plain.p95
    );
    println!(
        "nono-agent exec -- true   mean {:>9.2?}  p50 {:>9.2?}  p95 {:>9.2?}",
        sandboxed.mean, sandboxed.p50, sandboxed.p95
    );
    println!(
        "added by the sandbox      mean {:>9.2?}  p50 {:>9.2?}   (goal <= 10 ms)",
        sandboxed.mean.saturating_sub(plain.mean),
        sandboxed.p50.saturating_sub(plain.p50)
    );

    println!("\n== loopback connect()+close(), {iterations} iterations, best of 6 per side, order rotated ==");
    let listener = listen_loopback()?;
    let addr = listener.local_addr()?;
    // Accept and drop in the background so the backlog never fills.
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let loop_args = [
        "connect-loop".to_string(),
        addr.to_string(),
        iterations.to_string(),
    ];
    // Alternate the order of the three sides each round so drift (CPU
    // frequency, cache, listener backlog) cannot favour one of them.
    let mut outside: Vec<f64> = Vec::new();
    let mut bpf: Vec<f64> = Vec::new();
    let mut seccomp: Vec<f64> = Vec::new();
    for round in 0..6 {
        let mut order = [0usize, 1, 2];
        order.rotate_left(round % 3);
        for side in order {
            let mut cmd = match side {
                0 => Command::new(&xtask),
                1 => {
                    let mut c = Command::new(&agent);
                    c.args(["exec", "-q", "--enforcer", "bpf", "--"])
                        .arg(&xtask);
                    c
                }
                _ => {
                    let mut c = Command::new(&agent);
                    c.args(["exec", "-q", "--enforcer", "seccomp", "--"])
                        .arg(&xtask);
                    c
                }
            };
            cmd.args(&loop_args);
            let v = run_loop(&mut cmd)?;
            [&mut outside, &mut bpf, &mut seccomp][side].push(v);
        }
    }
    println!("outside runs (µs): {outside:.2?}");
    println!("bpf runs     (µs): {bpf:.2?}");
    println!("seccomp runs (µs): {seccomp:.2?}");
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    let (o, b, s) = (best(&outside), best(&bpf), best(&seccomp));
    println!("outside the sandbox       {:>8.2} µs per connect+close", o);
    println!("bpf enforcer              {:>8.2} µs per connect+close", b);
    println!("seccomp enforcer          {:>8.2} µs per connect+close", s);
    println!(
        "ratio bpf/outside         {:>8.3}x   (goal <= 1.05x)",
        b / o
    );
    println!(
        "seccomp added per connect {:>8.2} µs   (goal <= 15 µs)",
        s - o
    );
    println!();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        crate::bench_daemon::run(root, runs, iterations)?;
    } else {
        println!("== daemon: skipped (needs root) ==");
    }
    Ok(())
}

pub(crate) fn run_loop(cmd: &mut Command) -> Result<f64> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = String::from_utf8_lossy(&out.stdout);
    s.trim()
        .parse::<f64>()
        .with_context(|| format!("connect-loop printed {s:?}"))
}

/// Connects to ADDR and closes, N times; prints µs per iteration.
pub fn connect_loop(args: &[String]) -> Result<()> {
    let addr: SocketAddr = args.first().context("connect-loop ADDR N")?.parse()?;
    let n: u32 = args.get(1).context("connect-loop ADDR N")?.parse()?;
    let t = Instant::now();
    for _ in 0..n {
        let s = TcpStream::connect(addr)?;
        linger_zero(&s)?;
        drop(s);
    }
    println!("{:.3}", t.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    Ok(())
}

/// Close with RST instead of FIN so 100k short connections do not exhaust
/// ephemeral ports in TIME_WAIT.
fn linger_zero(s: &TcpStream) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized linger struct.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("SO_LINGER: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A loopback listener with a deep backlog (std's default of 128 overflows
/// under a tight connect loop and turns SYN drops into 1 s retransmits).
pub(crate) fn listen_loopback() -> Result<TcpListener> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket syscalls on a fresh fd that we own and wrap.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let listener = TcpListener::from_raw_fd(fd);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
            || libc::listen(fd, 4096) != 0
        {
            bail!("bind/listen: {}", std::io::Error::last_os_error());
        }
        Ok(listener)
    }
}
