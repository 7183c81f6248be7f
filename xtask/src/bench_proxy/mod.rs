//! `cargo xtask bench-proxy`: the filtering proxy (`nono-agent proxy`)
//! measured side by side with a direct connection, tinyproxy and squid.
//!
//! 1. CONNECT tunnel bulk throughput (upload and download of `--mib` MiB)
//!    vs the same transfer over a direct connection.
//! 2. HTTP request rate and latency (wrk, absolute-form GETs over keep-alive
//!    connections) through our proxy, tinyproxy and squid, each configured
//!    with a one-domain allowlist, same origin, same client, same
//!    concurrency; a direct row for reference, and a diagnostic row of our
//!    proxy with `tcp_tw_reuse=1` in its namespace (shows what its
//!    TIME_WAIT sockets towards the origin cost).
//! 3. Memory of the standalone proxy (VmRSS, VmHWM) with 0 tunnels and with
//!    `--tunnels` open tunnels (idle, then after 64 KiB went each way
//!    through each).
//!
//! Topology (everything is removed at exit, no packet leaves the machine):
//!
//! ```text
//!   netns nbp<pid>c (client)                    netns nbp<pid>s (server)
//!   lo 127.0.0.1: wrk, bench clients,           198.51.100.2/24
//!                 nono-agent proxy :3128,         :8080-8083 HTTP origins
//!                 tinyproxy :3129, squid :3130    :9000 bulk sink/source
//!   veth 198.51.100.1/24  <----------------->     :9001 echo
//!   (no default route: nothing can reach the machine's DNS)
//! ```
//!
//! Every proxy gets its own origin port, so one proxy's TIME_WAIT sockets
//! cannot slow another's run down. Names are resolved without DNS: our
//! proxy with `--resolve`, squid with its own `hosts_file`, tinyproxy is
//! given the origin's IP address (its filter allows exactly that address).
//!
//! Needs root, `ip`, `nsenter` and the Debian packages wrk, tinyproxy and
//! squid (installed with apt-get when missing, without starting their
//! services). Figures are printed, never asserted. `--agent PATH` measures
//! another nono-agent build (e.g. before/after a change) with the same rig.

pub(crate) mod cleanup;
mod http;
mod measure;
mod memory;
mod origin;
mod proxies;
pub(crate) mod rig;
mod summary;
mod tools;
mod tunnels;

pub(crate) use tools::which;

use anyhow::{bail, Context as _, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cleanup::{block_signals, signal_thread, Proc, TempDir};
use http::bench_http;
use memory::bench_memory;
use origin::Server;
use proxies::{sanity_check, start_squid, start_tinyproxy, ProxyUnderTest};
use rig::{raise_nofile_limit, sweep_stale_netns, wait_port, Net};
use tools::{ensure_tools, Tools};
use tunnels::bench_tunnels;

/// The server end of the rig's veth pair, where the origins listen.
pub(super) use nono_tests::netns::SERVER_V4;
pub(super) const DOMAIN: &str = "allowed.test";
/// The row name of the `--compare` build.
pub(super) const COMPARE_NAME: &str = "nono-agent proxy (--compare)";
/// The row names of the `--compare` builds, in the order given (the first
/// keeps the single compare's name; scripts read it).
pub(super) const COMPARE_NAMES: [&str; 4] = [
    COMPARE_NAME,
    "nono-agent proxy (--compare 2)",
    "nono-agent proxy (--compare 3)",
    "nono-agent proxy (--compare 4)",
];

/// Origin ports: one per client so TIME_WAIT sockets of one run never
/// collide with another's 4-tuples.
pub(super) const ORIGIN_DIRECT: u16 = 8080;
pub(super) const ORIGIN_NONO: u16 = 8081;
pub(super) const ORIGIN_TINYPROXY: u16 = 8082;
pub(super) const ORIGIN_SQUID: u16 = 8083;
/// Our proxy again, for the tcp_tw_reuse diagnostic row.
pub(super) const ORIGIN_NONO_DIAG: u16 = 8084;
/// The `--compare` builds of our proxy (8085 and the next three).
pub(super) const ORIGIN_NONO_CMP: u16 = 8085;
pub(super) const BULK_PORT: u16 = 9000;
pub(super) const ECHO_PORT: u16 = 9001;

pub(super) const PORT_NONO: u16 = 3128;
pub(super) const PORT_TINYPROXY: u16 = 3129;
pub(super) const PORT_SQUID: u16 = 3130;
/// The `--compare` builds (3131 and the next three).
pub(super) const PORT_NONO_CMP: u16 = 3131;

/// The origin's response body (a small API-style answer).
pub(super) const BODY: &[u8] = b"{\"ok\":true,\"server\":\"nono-bench-origin\",\"padding\":\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}\n";

pub(super) const PACKAGES: [(&str, &str); 3] = [
    ("wrk", "wrk"),
    ("tinyproxy", "tinyproxy"),
    ("squid", "squid"),
];

pub(super) struct Opts {
    mib: u64,
    rounds: usize,
    duration: u64,
    connections: usize,
    wrk_threads: usize,
    tunnels: usize,
    skip_build: bool,
    install: bool,
    only: Vec<String>,
    /// Another nono-agent binary to measure (e.g. a build of another commit).
    agent: Option<PathBuf>,
    /// Other nono-agent binaries (up to 4) measured in the same run,
    /// interleaved with the first (before/after a change, variants).
    compare: Vec<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self {
            mib: 2048,
            rounds: 5,
            duration: 10,
            connections: 64,
            wrk_threads: 1,
            tunnels: 1000,
            skip_build: false,
            install: true,
            only: vec!["tunnel".into(), "http".into(), "memory".into()],
            agent: None,
            compare: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| -> Result<String> {
                it.next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--mib" => o.mib = val(a)?.parse()?,
                "--rounds" => o.rounds = val(a)?.parse()?,
                "--duration" => o.duration = val(a)?.parse()?,
                "--connections" => o.connections = val(a)?.parse()?,
                "--wrk-threads" => o.wrk_threads = val(a)?.parse()?,
                "--tunnels" => o.tunnels = val(a)?.parse()?,
                "--only" => o.only = val(a)?.split(',').map(str::to_string).collect(),
                "--agent" => o.agent = Some(PathBuf::from(val(a)?)),
                "--compare" => o.compare.push(PathBuf::from(val(a)?)),
                "--skip-build" => o.skip_build = true,
                "--no-install" => o.install = false,
                "-h" | "--help" => {
                    println!(
                        "usage: cargo xtask bench-proxy [--mib N] [--rounds N] [--duration SECS] \
                         [--connections N] [--wrk-threads N] [--tunnels N] \
                         [--only tunnel,http,memory] [--agent PATH] [--compare PATH]... [--skip-build] \
                         [--no-install]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown bench-proxy option {other} (see --help)"),
            }
        }
        for s in &o.only {
            if !["tunnel", "http", "memory"].contains(&s.as_str()) {
                bail!("--only: unknown section {s:?} (tunnel, http, memory)");
            }
        }
        if o.compare.len() > COMPARE_NAMES.len() {
            bail!("--compare: at most {} builds", COMPARE_NAMES.len());
        }
        if o.mib == 0 || o.rounds == 0 || o.duration == 0 || o.connections == 0 {
            bail!("--mib, --rounds, --duration and --connections must be at least 1");
        }
        Ok(o)
    }

    fn wants(&self, section: &str) -> bool {
        self.only.iter().any(|s| s == section)
    }
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    measure(root, args).map(drop)
}

/// The summary of a [`measure`] run, for `cargo xtask bench`'s table.
pub(crate) struct Figures {
    summary: summary::Summary,
    opts: Opts,
}

impl Figures {
    /// The same summary table bench-proxy ends with.
    pub(crate) fn table(&self) -> String {
        self.summary.table(&self.opts)
    }
}

/// Runs bench-proxy with `args` (printing its report as `run` does) and
/// returns its summary.
pub(crate) fn measure(root: &Path, args: &[String]) -> Result<Figures> {
    let opts = Opts::parse(args)?;
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        bail!("bench-proxy needs root (it creates network namespaces); run it with sudo");
    }
    let started = Instant::now();
    let tools = ensure_tools(opts.install)?;
    if !opts.skip_build {
        // The origin servers and clients live in this binary: measure with
        // an optimised build of it too (`cargo xtask` builds it in debug).
        crate::release_build_and_reexec(root, "bench-proxy", args)?;
    }
    block_signals()?;
    std::thread::spawn(signal_thread);
    raise_nofile_limit();
    let agent = match &opts.agent {
        Some(a) => std::fs::canonicalize(a).with_context(|| format!("--agent {}", a.display()))?,
        None => root.join("target/release/nono-agent"),
    };
    if !agent.exists() {
        bail!("{} is missing (drop --skip-build)", agent.display());
    }
    let compare = opts
        .compare
        .iter()
        .map(|c| std::fs::canonicalize(c).with_context(|| format!("--compare {}", c.display())))
        .collect::<Result<Vec<_>>>()?;

    sweep_stale_netns();
    let tmp = TempDir::new()?;
    let net = Net::create()?;
    let server = Server::start(&net.srv)?;
    wait_port(&net.cli, SocketAddr::from((SERVER_V4, ORIGIN_DIRECT)))
        .context("the origin in the server namespace is not reachable over the veth")?;

    let secret = "benchsecret0123456789abcdef";
    let auth = format!("Basic {}", base64(format!("nono:{secret}").as_bytes()));
    let nono_args = |listen: u16| -> Vec<String> {
        let mut v = vec![
            "proxy".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{listen}"),
            "--secret".into(),
            secret.into(),
            "--resolve".into(),
            format!("{DOMAIN}={SERVER_V4}"),
        ];
        for p in [
            ORIGIN_NONO,
            ORIGIN_NONO_DIAG,
            ORIGIN_NONO_CMP,
            ORIGIN_NONO_CMP + 1,
            ORIGIN_NONO_CMP + 2,
            ORIGIN_NONO_CMP + 3,
            BULK_PORT,
            ECHO_PORT,
        ] {
            v.push("--allow-domain".into());
            v.push(format!("{DOMAIN}:{p}"));
        }
        v
    };

    println!(
        "\nnono-agent proxy benchmark ({} cores; client, proxies and origin share them)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("agent: {}", agent.display());
    for (c, name) in compare.iter().zip(COMPARE_NAMES) {
        println!("{name}: {}", c.display());
    }
    println!(
        "versions: {} | {}",
        tools.tinyproxy_version, tools.squid_version
    );

    let mut report = String::new();
    let mut summary = summary::Summary::default();
    let result = sections(
        &opts,
        &net,
        &tmp,
        &server,
        &tools,
        &agent,
        &compare,
        &auth,
        &nono_args,
        &mut report,
        &mut summary,
    );
    drop(server);
    drop(net);
    drop(tmp);
    println!("{report}");
    result?;
    println!("\nbench-proxy finished in {:.0?}", started.elapsed());
    Ok(Figures { summary, opts })
}

/// Runs the selected sections, appending each one's table to `report` as
/// soon as it is complete (so a failure later still shows what was measured).
#[allow(clippy::too_many_arguments)]
fn sections(
    opts: &Opts,
    net: &Net,
    tmp: &TempDir,
    server: &Server,
    tools: &Tools,
    agent: &Path,
    compare: &[PathBuf],
    auth: &str,
    nono_args: &dyn Fn(u16) -> Vec<String>,
    report: &mut String,
    summary: &mut summary::Summary,
) -> Result<()> {
    if opts.wants("tunnel") || opts.wants("http") {
        let nono = Proc::spawn_in(
            &net.cli,
            "nono-agent proxy",
            Command::new(agent).args(nono_args(PORT_NONO)),
            &tmp.path.join("nono.log"),
        )?;
        let cmp = compare
            .iter()
            .zip(0u16..)
            .map(|(c, i)| {
                Proc::spawn_in(
                    &net.cli,
                    "nono-agent proxy (compare)",
                    Command::new(c).args(nono_args(PORT_NONO_CMP + i)),
                    &tmp.path.join(format!("nono-cmp{i}.log")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let tiny = start_tinyproxy(net, tmp, tools)?;
        let squid = start_squid(net, tmp, tools)?;
        let mut listening = vec![
            ("nono-agent proxy", PORT_NONO),
            ("tinyproxy", PORT_TINYPROXY),
            ("squid", PORT_SQUID),
        ];
        for (i, name) in (0u16..).zip(COMPARE_NAMES).take(cmp.len()) {
            listening.push((name, PORT_NONO_CMP + i));
        }
        for (name, port) in listening {
            wait_port(&net.cli, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).with_context(
                || {
                    format!(
                        "{name} did not start listening (logs in {})",
                        tmp.path.display()
                    )
                },
            )?;
        }
        let mut proxies = vec![
            ProxyUnderTest {
                name: "nono-agent proxy",
                port: PORT_NONO,
                http_authority: format!("{DOMAIN}:{ORIGIN_NONO}"),
                origin_port: ORIGIN_NONO,
                tunnel_target: format!("{DOMAIN}:{BULK_PORT}"),
                auth: Some(auth.to_string()),
                pid: nono.pid(),
            },
            ProxyUnderTest {
                name: "tinyproxy",
                port: PORT_TINYPROXY,
                http_authority: format!("{SERVER_V4}:{ORIGIN_TINYPROXY}"),
                origin_port: ORIGIN_TINYPROXY,
                tunnel_target: format!("{SERVER_V4}:{BULK_PORT}"),
                auth: None,
                pid: tiny.pid(),
            },
            ProxyUnderTest {
                name: "squid",
                port: PORT_SQUID,
                http_authority: format!("{DOMAIN}:{ORIGIN_SQUID}"),
                origin_port: ORIGIN_SQUID,
                tunnel_target: format!("{DOMAIN}:{BULK_PORT}"),
                auth: None,
                pid: squid.pid(),
            },
        ];
        for ((c, i), name) in cmp.iter().zip(0u16..).zip(COMPARE_NAMES) {
            proxies.insert(
                1 + usize::from(i),
                ProxyUnderTest {
                    name,
                    port: PORT_NONO_CMP + i,
                    http_authority: format!("{DOMAIN}:{}", ORIGIN_NONO_CMP + i),
                    origin_port: ORIGIN_NONO_CMP + i,
                    tunnel_target: format!("{DOMAIN}:{BULK_PORT}"),
                    auth: Some(auth.to_string()),
                    pid: c.pid(),
                },
            );
        }
        for p in &proxies {
            sanity_check(&net.cli, p)?;
        }
        if opts.wants("tunnel") {
            let (t, runs, cpu) = bench_tunnels(net, opts, &proxies)?;
            report.push_str(&t);
            summary.tunnels = runs;
            summary.tunnel_cpu = cpu;
        }
        if opts.wants("http") {
            let (h, runs, cpu) = bench_http(net, opts, tmp, server, &tools.wrk, &proxies)?;
            report.push_str(&h);
            summary.http = runs;
            summary.http_cpu = cpu;
        }
        drop(squid);
        drop(tiny);
        drop(cmp);
        drop(nono);
    }

    if opts.wants("memory") {
        let mut agents = vec![("nono-agent proxy", agent, PORT_NONO + 10)];
        for ((c, name), i) in compare.iter().zip(COMPARE_NAMES).zip(11u16..) {
            agents.push((name, c.as_path(), PORT_NONO + i));
        }
        for (which, path, port) in agents {
            let (m, samples) = bench_memory(net, opts, path, which, port, tmp, nono_args, auth)?;
            report.push_str(&m);
            summary.memory.push((
                which.to_string(),
                samples
                    .into_iter()
                    .map(|(s, (rss, _, _))| (s, rss))
                    .collect(),
            ));
        }
    }
    report.push_str(&summary.table(opts));
    Ok(())
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"nono:s3cret"), "bm9ubzpzM2NyZXQ=");
    }
}
