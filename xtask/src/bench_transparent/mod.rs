//! `cargo xtask bench-transparent`: transparent mode (`exec --transparent`,
//! issue 14) measured side by side with explicit proxy mode (the proxy
//! variables) and a direct connection, in the same run:
//!
//! 1. HTTPS: the same curl, inside `nono-agent exec` (BPF, as root), makes
//!    `--requests` requests to an allowed name, each on a new TCP and TLS
//!    connection (`Connection: close`): once one after another (latency:
//!    p50/p99 of curl's `time_total`, and requests/s) and once with
//!    `--parallel` transfers in flight (requests/s). Explicit mode is a
//!    CONNECT tunnel through the sandbox's proxy; transparent mode is
//!    `curl --noproxy '*'`: the name resolves through the agent's resolver
//!    to a synthetic address, the connect is redirected to the proxy. The
//!    modes alternate for `--rounds` rounds; medians are reported.
//! 2. A protocol where the server speaks first (a banner on port 2525):
//!    time from connect to the banner, transparent vs direct (the proxy
//!    dials the synthetic address's name at once and lets whichever side
//!    speaks first go first).
//! 3. DNS: answers per second from the agent's resolver (one UDP socket,
//!    `--window` queries in flight, half allowed, half denied names).
//!
//! Topology: the bench-proxy rig (`nbp<pid>c` / `nbp<pid>s`, veth
//! 198.51.100.1/.2, no default route: nothing reaches the machine's DNS,
//! every name is pinned with `--resolve` or answered by the agent). The
//! origin (`origin.py`, asyncio + ssl, P-256 certificate made with
//! openssl) runs in the server namespace. Figures are printed, never
//! asserted. Needs root, python3, openssl, curl.

pub mod load;

use anyhow::{bail, Context as _, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bench_proxy::cleanup::{block_signals, run_registered, signal_thread, Proc, TempDir};
use crate::bench_proxy::rig::{sweep_stale_netns, wait_port, Net};

const ORIGIN: &str = "198.51.100.2";
const NAME: &str = "allowed.test";
const BANNER_PORT: u16 = 2525;
/// A resolver address the DNS workload names (redirected to the agent's).
const HARD_RESOLVER: &str = "203.0.113.53:53";
const ORIGIN_PY: &str = include_str!("origin.py");

struct Opts {
    requests: usize,
    parallel: usize,
    rounds: usize,
    banners: usize,
    dns_seconds: f64,
    window: usize,
    agent: Option<PathBuf>,
    skip_build: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Opts {
            requests: 400,
            parallel: 8,
            rounds: 3,
            banners: 20,
            dns_seconds: 3.0,
            window: 32,
            agent: None,
            skip_build: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value"))
            };
            match a.as_str() {
                "--requests" => o.requests = val()?.parse()?,
                "--parallel" => o.parallel = val()?.parse()?,
                "--rounds" => o.rounds = val()?.parse()?,
                "--banners" => o.banners = val()?.parse()?,
                "--dns-seconds" => o.dns_seconds = val()?.parse()?,
                "--window" => o.window = val()?.parse()?,
                "--agent" => o.agent = Some(PathBuf::from(val()?)),
                "--skip-build" => o.skip_build = true,
                "-h" | "--help" => {
                    println!(
                        "usage: cargo xtask bench-transparent [--requests N] [--parallel N] \
                         [--rounds N] [--banners N] [--dns-seconds S] [--window N] \
                         [--agent PATH] [--skip-build]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown bench-transparent option {other} (see --help)"),
            }
        }
        if o.requests == 0 || o.parallel == 0 || o.rounds == 0 || o.banners == 0 {
            bail!("--requests, --parallel, --rounds and --banners must be at least 1");
        }
        if o.window == 0 || o.window > 4096 || o.dns_seconds <= 0.0 {
            bail!("--window must be 1..=4096 and --dns-seconds positive");
        }
        Ok(o)
    }
}

/// How curl reaches the origin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Explicit,
    Transparent,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Direct, Mode::Explicit, Mode::Transparent];

    fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct (no sandbox)",
            Mode::Explicit => "explicit proxy (HTTPS_PROXY)",
            Mode::Transparent => "transparent (--transparent)",
        }
    }
}

/// One HTTPS run's figures.
#[derive(Clone, Copy, Default)]
struct HttpsRun {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let opts = Opts::parse(args)?;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        bail!("bench-transparent needs root (network namespaces, the BPF enforcer)");
    }
    if !opts.skip_build {
        crate::release_build_and_reexec(root, "bench-transparent", args)?;
    }
    for tool in ["python3", "openssl", "curl", "nsenter"] {
        crate::bench_proxy::which(tool)
            .with_context(|| format!("{tool} is needed (apt-get install it)"))?;
    }
    block_signals()?;
    std::thread::spawn(signal_thread);
    let agent = match &opts.agent {
        Some(a) => std::fs::canonicalize(a).with_context(|| format!("--agent {}", a.display()))?,
        None => root.join("target/release/nono-agent"),
    };
    let xtask = std::env::current_exe().context("this xtask's path")?;
    if !agent.exists() {
        bail!("{} is missing (drop --skip-build)", agent.display());
    }
    let started = Instant::now();
    sweep_stale_netns();
    let tmp = TempDir::new()?;
    let net = Net::create()?;
    let cert = tmp.path.join("cert.pem");
    let key = tmp.path.join("key.pem");
    make_cert(&cert, &key)?;
    let origin_py = tmp.path.join("origin.py");
    std::fs::write(&origin_py, ORIGIN_PY)?;
    let ready = tmp.path.join("origin.ready");
    let mut origin = Proc::spawn_in(
        &net.srv,
        "origin.py",
        Command::new("python3")
            .arg(&origin_py)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--ready")
            .arg(&ready),
        &tmp.path.join("origin.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        origin.check_alive()?;
        if Instant::now() > deadline {
            bail!("origin.py did not start (log in {})", tmp.path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_port(&net.cli, SocketAddr::from(([198, 51, 100, 2], 443)))?;

    let ctx = Ctx {
        agent: &agent,
        xtask: &xtask,
        net: &net,
        cert: &cert,
        tmp: &tmp.path,
    };
    println!(
        "\nnono-agent transparent-mode benchmark ({} cores shared by client, agent, origin)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("agent: {}", agent.display());
    let report = sections(&ctx, &opts);
    drop(origin);
    drop(net);
    drop(tmp);
    println!("{}", report?);
    println!("bench-transparent finished in {:.0?}", started.elapsed());
    Ok(())
}

struct Ctx<'a> {
    agent: &'a Path,
    xtask: &'a Path,
    net: &'a Net,
    cert: &'a Path,
    tmp: &'a Path,
}

impl Ctx<'_> {
    /// `nsenter --net=CLIENT [nono-agent exec ... --] argv`.
    fn command(&self, mode: Mode, argv: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.net.cli))
            .arg("--");
        if mode != Mode::Direct {
            c.arg(self.agent).args([
                "exec",
                "-q",
                "--enforcer",
                "bpf",
                "--allow-domain",
                NAME,
                "--allow-domain",
                &format!("{NAME}:{BANNER_PORT}"),
                "--resolve",
                &format!("{NAME}={ORIGIN}"),
                // Never asked (the name is pinned); nothing listens there.
                "--dns-server",
                "127.0.0.1:9",
            ]);
            if mode == Mode::Transparent {
                c.arg("--transparent");
            }
            c.arg("--");
        }
        c.args(argv);
        c
    }

    fn run(&self, mode: Mode, argv: &[&str]) -> Result<String> {
        let out = run_registered(&mut self.command(mode, argv))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            bail!(
                "{} {argv:?} failed ({}): {}{}",
                mode.label(),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// `--requests` HTTPS requests, each on a new connection, `parallel`
    /// at a time (1: one after another), timed inside the sandbox.
    fn https(&self, mode: Mode, requests: usize, parallel: usize) -> Result<HttpsRun> {
        let cfg = self.tmp.join(format!("curl-{requests}.cfg"));
        let mut text = String::new();
        for i in 0..requests {
            text.push_str(&format!(
                "url = \"https://{NAME}/r{i}\"\noutput = \"/dev/null\"\n"
            ));
        }
        std::fs::write(&cfg, text)?;
        let mut curl = format!(
            "curl -sS --cacert {} -H 'Connection: close' -w '%{{time_total}}\\n' -K {}",
            self.cert.display(),
            cfg.display()
        );
        match mode {
            Mode::Direct => curl.push_str(&format!(" --resolve {NAME}:443:{ORIGIN}")),
            Mode::Transparent => curl.push_str(" --noproxy '*'"),
            Mode::Explicit => {}
        }
        if parallel > 1 {
            curl.push_str(&format!(" --parallel --parallel-max {parallel}"));
        }
        let script =
            format!("s=$(date +%s%N); {curl} || exit 1; e=$(date +%s%N); echo WALL $((e - s))");
        let out = self.run(mode, &["sh", "-c", &script])?;
        let mut times: Vec<f64> = out
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .collect();
        let wall_ns: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("WALL "))
            .and_then(|w| w.trim().parse().ok())
            .context("no WALL line")?;
        if times.len() != requests {
            bail!(
                "{}: {} of {requests} requests timed: {out}",
                mode.label(),
                times.len()
            );
        }
        times.sort_by(f64::total_cmp);
        Ok(HttpsRun {
            p50_ms: percentile(&times, 50) * 1e3,
            p99_ms: percentile(&times, 99) * 1e3,
            rps: requests as f64 / (wall_ns / 1e9),
        })
    }

    /// Time to a server-first protocol's banner, in ms (p50, p99).
    fn banner(&self, mode: Mode, count: usize) -> Result<(f64, f64)> {
        let host = if mode == Mode::Direct { ORIGIN } else { NAME };
        let x = self.xtask.display().to_string();
        let port = BANNER_PORT.to_string();
        let n = count.to_string();
        let out = self.run(
            mode,
            &[
                &x,
                "banner-loop",
                "--host",
                host,
                "--port",
                &port,
                "--count",
                &n,
            ],
        )?;
        let mut us: Vec<f64> = out
            .lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .collect();
        if us.len() != count {
            bail!("banner-loop: {} of {count} connections: {out}", us.len());
        }
        us.sort_by(f64::total_cmp);
        Ok((percentile(&us, 50) / 1e3, percentile(&us, 99) / 1e3))
    }
}

fn sections(ctx: &Ctx, o: &Opts) -> Result<String> {
    let mut seq: Vec<Vec<HttpsRun>> = vec![Vec::new(); 3];
    let mut par: Vec<Vec<HttpsRun>> = vec![Vec::new(); 3];
    // Every mode answers once before anything is measured.
    for m in Mode::ALL {
        ctx.https(m, 2, 1)
            .with_context(|| format!("sanity check, {}", m.label()))?;
    }
    for round in 0..o.rounds {
        eprintln!("bench-transparent: HTTPS round {}/{}", round + 1, o.rounds);
        for (i, m) in Mode::ALL.iter().enumerate() {
            seq[i].push(ctx.https(*m, o.requests, 1)?);
            par[i].push(ctx.https(*m, o.requests, o.parallel)?);
        }
    }
    let med = |runs: &[HttpsRun], f: fn(&HttpsRun) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut r = String::new();
    r.push_str(&format!(
        "\nHTTPS, a new TCP+TLS connection per request ({} requests, median of {} rounds)\n",
        o.requests, o.rounds
    ));
    r.push_str(&format!(
        "{:<30} {:>9} {:>9} {:>12} {:>10} {:>14}\n",
        "mode",
        "p50 ms",
        "p99 ms",
        "+p50 ms",
        "req/s",
        format!("req/s ×{}", o.parallel)
    ));
    let direct_p50 = med(&seq[0], |x| x.p50_ms);
    let mut rps = [0.0; 3];
    for (i, m) in Mode::ALL.iter().enumerate() {
        let p50 = med(&seq[i], |x| x.p50_ms);
        rps[i] = med(&par[i], |x| x.rps);
        r.push_str(&format!(
            "{:<30} {:>9.2} {:>9.2} {:>12.2} {:>10.0} {:>14.0}\n",
            m.label(),
            p50,
            med(&seq[i], |x| x.p99_ms),
            p50 - direct_p50,
            med(&seq[i], |x| x.rps),
            rps[i]
        ));
    }
    let explicit_p50 = med(&seq[1], |x| x.p50_ms);
    let transparent_p50 = med(&seq[2], |x| x.p50_ms);
    r.push_str(&format!(
        "transparent vs explicit: p50 {:+.1} %, req/s ×{} {:+.1} %\n",
        (transparent_p50 / explicit_p50 - 1.0) * 100.0,
        o.parallel,
        (rps[2] / rps[1] - 1.0) * 100.0
    ));

    eprintln!("bench-transparent: server-first protocol");
    let (d50, d99) = ctx.banner(Mode::Direct, o.banners)?;
    let (t50, t99) = ctx.banner(Mode::Transparent, o.banners)?;
    r.push_str(&format!(
        "\nServer speaks first (banner on :{BANNER_PORT}), connect to first line, {} connections\n\
         {:<30} {:>9} {:>9}\n{:<30} {:>9.2} {:>9.2}\n{:<30} {:>9.2} {:>9.2}\n",
        o.banners,
        "mode",
        "p50 ms",
        "p99 ms",
        Mode::Direct.label(),
        d50,
        d99,
        Mode::Transparent.label(),
        t50,
        t99
    ));

    eprintln!("bench-transparent: DNS");
    let x = ctx.xtask.display().to_string();
    let secs = o.dns_seconds.to_string();
    let window = o.window.to_string();
    let out = ctx.run(
        Mode::Transparent,
        &[
            &x,
            "dns-load",
            "--server",
            HARD_RESOLVER,
            "--name",
            NAME,
            "--seconds",
            &secs,
            "--window",
            &window,
        ],
    )?;
    let line = out
        .lines()
        .find(|l| l.starts_with("DNS-LOAD"))
        .with_context(|| format!("dns-load printed no result: {out}"))?;
    let field = |k: &str| -> f64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    r.push_str(&format!(
        "\nDNS from the agent's resolver (UDP to {HARD_RESOLVER}, redirected; {} in flight; \
         half allowed, half denied names)\n  {:.0} answers/s ({:.0} A, {:.0} NXDOMAIN, {:.0} \
         other, {:.0} lost in {:.1} s)\n",
        o.window,
        field("answers=") / field("secs="),
        field("a="),
        field("nxdomain="),
        field("other="),
        field("lost="),
        field("secs=")
    ));
    Ok(r)
}

/// The `p`th percentile of sorted `v` (nearest rank).
fn percentile(v: &[f64], p: usize) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = (v.len() * p).div_ceil(100).clamp(1, v.len()) - 1;
    v[i]
}

/// A self-signed P-256 certificate for the origin (fast handshakes, so
/// the proxy's share of each request is not drowned in RSA signing).
fn make_cert(cert: &Path, key: &Path) -> Result<()> {
    let out = run_registered(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={NAME}"),
        "-addext",
        &format!("subjectAltName=DNS:{NAME}"),
        "-keyout",
        &key.display().to_string(),
        "-out",
        &cert.display().to_string(),
    ]))?;
    if !out.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The sandboxed curl reads the certificate (its directory is 0755).
    std::fs::set_permissions(cert, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50), 50.0);
        assert_eq!(percentile(&v, 99), 99.0);
        assert_eq!(percentile(&[3.0], 99), 3.0);
        assert_eq!(percentile(&[], 50), 0.0);
    }

    #[test]
    fn options() {
        let o = Opts::parse(&["--requests".into(), "10".into()]).unwrap();
        assert_eq!((o.requests, o.parallel), (10, 8));
        assert!(Opts::parse(&["--window".into(), "0".into()]).is_err());
        assert!(Opts::parse(&["--bogus".into()]).is_err());
    }
}
