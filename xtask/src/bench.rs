//! `cargo xtask bench`: what the sandbox costs, measured side by side.
//!
//! 1. Start-up: wall time of `nono-agent exec -q -- true` vs `true`.
//! 2. Per connection: a loop of loopback `connect()` + `close()` (TCP) and
//!    of UDP `socket()` + `connect()` + `close()` inside a sandbox (bpf and
//!    seccomp enforcers) vs outside, same binary, same listener, in
//!    `--rounds` rounds (9) with the sides' order rotated each round.
//! 3. The daemon (`bench_daemon`, as root): start-up through it vs the
//!    other ways, its memory with N live sandboxes, connect through it.
//!    `--only daemon` runs this part alone.
//! 4. The proxy (as root, unless `--skip-proxy`): bench-proxy's CONNECT and
//!    HTTP sections (ours, direct, squid, tinyproxy; options after `--`).
//!
//! It ends with one summary table: every figure's median with its spread
//! and run count, the sandbox's costs as paired differences to outside.
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

/// Options of `cargo xtask bench`.
struct Opts {
    iterations: usize,
    runs: usize,
    rounds: usize,
    only_daemon: bool,
    skip_build: bool,
    skip_proxy: bool,
    /// Passed to the proxy part (bench-proxy's options).
    proxy_args: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self {
            iterations: 20_000,
            runs: 100,
            rounds: 9,
            only_daemon: false,
            skip_build: false,
            skip_proxy: false,
            proxy_args: [
                "--only",
                "tunnel,http",
                "--rounds",
                "5",
                "--mib",
                "1024",
                "--duration",
                "5",
            ]
            .map(String::from)
            .to_vec(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--iterations" => o.iterations = it.next().context("--iterations N")?.parse()?,
                "--runs" => o.runs = it.next().context("--runs N")?.parse()?,
                "--rounds" => o.rounds = it.next().context("--rounds N")?.parse()?,
                "--only" => match it.next().map(String::as_str) {
                    Some("daemon") => o.only_daemon = true,
                    _ => bail!("--only daemon"),
                },
                "--skip-build" => o.skip_build = true,
                "--skip-proxy" => o.skip_proxy = true,
                // Everything after `--` is bench-proxy's.
                "--" => {
                    o.proxy_args = it.by_ref().cloned().collect();
                }
                other => bail!(
                    "unknown bench option {other} (--iterations N, --runs N, --rounds N, \
                     --only daemon, --skip-build, --skip-proxy, -- BENCH-PROXY-OPTIONS)"
                ),
            }
        }
        if o.iterations == 0 || o.runs == 0 || o.rounds == 0 {
            bail!("--iterations, --runs and --rounds must be at least 1");
        }
        Ok(o)
    }
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let opts = Opts::parse(args)?;
    if !opts.skip_build {
        // The proxy part's origins and clients live in this binary: run
        // the optimised build of it (`cargo xtask` builds it in debug).
        crate::release_build_and_reexec(root, "bench", args)?;
    }
    let (iterations, runs) = (opts.iterations, opts.runs);
    if opts.only_daemon {
        return crate::bench_daemon::run(root, runs, iterations);
    }
    let agent = root.join("target/release/nono-agent");
    let xtask = root.join("target/release/xtask");
    let true_bin = "/bin/true";
    let mut table = Table::default();

    println!("== start-up: {runs} runs each, interleaved ==");
    // Warm caches (page cache, BPF feature probes' first-run costs).
    let _ = time_command(Command::new(&agent).args(["exec", "-q", "--", true_bin]), 5)?;
    let mut plain_runs = Vec::with_capacity(runs);
    let mut sandboxed_runs = Vec::with_capacity(runs);
    for _ in 0..runs {
        plain_runs.push(time_command(&mut Command::new(true_bin), 1)?.mean);
        sandboxed_runs
            .push(time_command(Command::new(&agent).args(["exec", "-q", "--", true_bin]), 1)?.mean);
    }
    let added: Vec<f64> = plain_runs
        .iter()
        .zip(&sandboxed_runs)
        .map(|(p, s)| (s.as_secs_f64() - p.as_secs_f64()) * 1e3)
        .collect();
    let plain = stats(plain_runs);
    let sandboxed = stats(sandboxed_runs);
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
    table.row_deciles("start-up added by exec -- true (ms)", &added, "<= 10 ms");

    let listener = listen_loopback()?;
    let addr = listener.local_addr()?;
    // Accept and drop in the background so the backlog never fills.
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    for proto in [Proto::Tcp, Proto::Udp] {
        connect_section(&opts, &agent, &xtask, addr, proto, &mut table)?;
    }
    println!();
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    if root_user {
        crate::bench_daemon::run(root, runs, iterations)?;
    } else {
        println!("== daemon: skipped (needs root) ==");
    }
    let proxy = if opts.skip_proxy {
        "skipped (--skip-proxy)".to_string()
    } else if !root_user {
        "skipped (needs root)".to_string()
    } else {
        let mut a = opts.proxy_args.clone();
        a.push("--skip-build".into());
        println!("\n== proxy: cargo xtask bench-proxy {} ==", a.join(" "));
        crate::bench_proxy::measure(root, &a)?.table()
    };
    println!(
        "\n== summary of this run (machine possibly shared): median [spread] n, added = \
         sandboxed minus outside, paired per round =="
    );
    print!("{}", table.render());
    println!("proxy (bench-proxy's summary, same invocation): {proxy}");
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Tcp,
    Udp,
}

/// One connect workload in rounds, each round running outside, bpf and
/// seccomp (order rotated each round so drift of the shared machine cannot
/// favour one side); prints the existing per-side rows and adds the paired
/// differences to `table`.
fn connect_section(
    opts: &Opts,
    agent: &Path,
    xtask: &Path,
    addr: SocketAddr,
    proto: Proto,
    table: &mut Table,
) -> Result<()> {
    let (what, mode) = match proto {
        Proto::Tcp => ("loopback connect()+close()", "tcp"),
        Proto::Udp => ("loopback UDP socket()+connect()+close()", "udp"),
    };
    println!(
        "\n== {what}, {} iterations, {} rounds per side, order rotated ==",
        opts.iterations, opts.rounds
    );
    let loop_args = [
        "connect-loop".to_string(),
        addr.to_string(),
        opts.iterations.to_string(),
        mode.to_string(),
    ];
    let mut outside: Vec<f64> = Vec::new();
    let mut bpf: Vec<f64> = Vec::new();
    let mut seccomp: Vec<f64> = Vec::new();
    for round in 0..opts.rounds {
        let mut order = [0usize, 1, 2];
        order.rotate_left(round % 3);
        for side in order {
            let mut cmd = match side {
                0 => Command::new(xtask),
                1 => {
                    let mut c = Command::new(agent);
                    c.args(["exec", "-q", "--enforcer", "bpf", "--"]).arg(xtask);
                    c
                }
                _ => {
                    let mut c = Command::new(agent);
                    c.args(["exec", "-q", "--enforcer", "seccomp", "--"])
                        .arg(xtask);
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
    let per = match proto {
        Proto::Tcp => "per connect+close",
        Proto::Udp => "per UDP connect",
    };
    // The TCP rows keep their labels (scripts read them).
    let tag = if proto == Proto::Tcp { "" } else { "UDP " };
    println!("{tag}outside the sandbox       {o:>8.2} µs {per}");
    println!("{tag}bpf enforcer              {b:>8.2} µs {per}");
    println!("{tag}seccomp enforcer          {s:>8.2} µs {per}");
    println!(
        "{tag}ratio bpf/outside         {:>8.3}x   (goal <= 1.05x)",
        b / o
    );
    let goal = if proto == Proto::Tcp { 15 } else { 8 };
    println!(
        "{tag}seccomp added per connect {:>8.2} µs   (goal <= {goal} µs)",
        s - o
    );
    let diff =
        |side: &[f64]| -> Vec<f64> { side.iter().zip(&outside).map(|(x, o)| x - o).collect() };
    let name = match proto {
        Proto::Tcp => "TCP connect+close",
        Proto::Udp => "UDP socket+connect+close",
    };
    table.row(&format!("{name}, outside (µs)"), &outside, "");
    table.row(
        &format!("{name}, added by bpf (µs)"),
        &diff(&bpf),
        "<= 5% of outside",
    );
    table.row(
        &format!("{name}, added by seccomp (µs)"),
        &diff(&seccomp),
        &format!("<= {goal} µs"),
    );
    Ok(())
}

/// The closing summary's rows: label, median, spread, count, goal.
#[derive(Default)]
struct Table {
    rows: Vec<[String; 5]>,
}

impl Table {
    /// A row of `v`'s median with its min–max.
    fn row(&mut self, label: &str, v: &[f64], goal: &str) {
        let (lo, hi) = (quantile(v, 0.0), quantile(v, 1.0));
        self.push(label, v, format!("[{lo:.2} - {hi:.2}]"), goal);
    }

    /// A row of `v`'s median with its 10th–90th percentiles (for many
    /// runs, where min–max is one outlier each).
    fn row_deciles(&mut self, label: &str, v: &[f64], goal: &str) {
        let (lo, hi) = (quantile(v, 0.1), quantile(v, 0.9));
        self.push(label, v, format!("[p10 {lo:.2} - p90 {hi:.2}]"), goal);
    }

    fn push(&mut self, label: &str, v: &[f64], spread: String, goal: &str) {
        self.rows.push([
            label.to_string(),
            format!("{:.2}", quantile(v, 0.5)),
            spread,
            v.len().to_string(),
            goal.to_string(),
        ]);
    }

    fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "{:<48} {:>9} {:>26} {:>4}  {}\n",
            "row", "median", "spread", "n", "goal"
        );
        for [l, m, s, n, g] in &self.rows {
            let _ = writeln!(out, "{l:<48} {m:>9} {s:>26} {n:>4}  {g}");
        }
        out
    }
}

/// The `q` quantile of `v` (nearest rank; the median of an even count is
/// the mean of the middle two), NaN for none.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if q == 0.5 && n.is_multiple_of(2) {
        return (v[n / 2 - 1] + v[n / 2]) / 2.0;
    }
    v[((n - 1) as f64 * q).round() as usize]
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

/// Connects to ADDR and closes, N times; prints µs per iteration. `udp`
/// (third argument): a UDP socket made, connected (nothing sent) and closed
/// each time, as a resolver does per query.
pub fn connect_loop(args: &[String]) -> Result<()> {
    let usage = "connect-loop ADDR N [tcp|udp]";
    let addr: SocketAddr = args.first().context(usage)?.parse()?;
    let n: u32 = args.get(1).context(usage)?.parse()?;
    let udp = match args.get(2).map(String::as_str) {
        None | Some("tcp") => false,
        Some("udp") => true,
        Some(other) => bail!("{usage}: unknown mode {other}"),
    };
    let t = Instant::now();
    for _ in 0..n {
        if udp {
            udp_connect(addr)?;
        } else {
            let s = TcpStream::connect(addr)?;
            linger_zero(&s)?;
            drop(s);
        }
    }
    println!("{:.3}", t.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    Ok(())
}

/// socket(AF_INET, SOCK_DGRAM) + connect(`addr`) + close, without the
/// bind std's UdpSocket would add.
fn udp_connect(addr: SocketAddr) -> Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let SocketAddr::V4(a) = addr else {
        bail!("connect-loop udp: IPv4 only");
    };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket syscall; the fd is owned (and closed) below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    use std::os::fd::AsRawFd as _;
    // SAFETY: valid fd and a correctly sized sockaddr_in.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("UDP connect to {addr}: {}", std::io::Error::last_os_error());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_the_summary_rows() {
        assert!(quantile(&[], 0.5).is_nan());
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[4.0, 1.0, 2.0, 3.0], 0.5), 2.5);
        let v: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!((quantile(&v, 0.1), quantile(&v, 0.9)), (10.0, 90.0));
        assert_eq!((quantile(&v, 0.0), quantile(&v, 1.0)), (0.0, 100.0));
        let mut t = Table::default();
        t.row(
            "TCP connect+close, added by seccomp (µs)",
            &[3.0, 1.0, 2.0],
            "<= 15 µs",
        );
        let r = t.render();
        assert!(
            r.contains("TCP connect+close, added by seccomp (µs)"),
            "{r}"
        );
        assert!(r.contains("[1.00 - 3.00]") && r.contains("<= 15 µs"), "{r}");
    }

    #[test]
    fn bad_options_are_named() {
        let a = |v: &[&str]| Opts::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(a(&["--rounds", "0"]).is_err());
        let e = a(&["--bogus"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--bogus"), "{e}");
        let o = a(&["--rounds", "11", "--skip-proxy", "--", "--mib", "64"]).unwrap();
        assert_eq!((o.rounds, o.skip_proxy), (11, true));
        assert_eq!(o.proxy_args, ["--mib", "64"]);
    }
}
