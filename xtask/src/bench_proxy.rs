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

use anyhow::{bail, Context as _, Result};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const DOMAIN: &str = "allowed.test";

/// Origin ports: one per client so TIME_WAIT sockets of one run never
/// collide with another's 4-tuples.
const ORIGIN_DIRECT: u16 = 8080;
const ORIGIN_NONO: u16 = 8081;
const ORIGIN_TINYPROXY: u16 = 8082;
const ORIGIN_SQUID: u16 = 8083;
/// Our proxy again, for the tcp_tw_reuse diagnostic row.
const ORIGIN_NONO_DIAG: u16 = 8084;
const BULK_PORT: u16 = 9000;
const ECHO_PORT: u16 = 9001;

const PORT_NONO: u16 = 3128;
const PORT_TINYPROXY: u16 = 3129;
const PORT_SQUID: u16 = 3130;

/// The origin's response body (a small API-style answer).
const BODY: &[u8] = b"{\"ok\":true,\"server\":\"nono-bench-origin\",\"padding\":\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}\n";

const PACKAGES: [(&str, &str); 3] = [
    ("wrk", "wrk"),
    ("tinyproxy", "tinyproxy"),
    ("squid", "squid"),
];

struct Opts {
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
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self {
            mib: 2048,
            rounds: 3,
            duration: 10,
            connections: 64,
            wrk_threads: 1,
            tunnels: 1000,
            skip_build: false,
            install: true,
            only: vec!["tunnel".into(), "http".into(), "memory".into()],
            agent: None,
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
                "--skip-build" => o.skip_build = true,
                "--no-install" => o.install = false,
                "-h" | "--help" => {
                    println!(
                        "usage: cargo xtask bench-proxy [--mib N] [--rounds N] [--duration SECS] \
                         [--connections N] [--wrk-threads N] [--tunnels N] \
                         [--only tunnel,http,memory] [--agent PATH] [--skip-build] [--no-install]"
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
        let status = Command::new("cargo")
            .args(["build", "--release", "-p", "nono-agent", "-p", "xtask"])
            .current_dir(root)
            .status()
            .context("running cargo build")?;
        if !status.success() {
            bail!("release build of nono-agent and xtask failed");
        }
        if cfg!(debug_assertions) {
            let err = Command::new(root.join("target/release/xtask"))
                .arg("bench-proxy")
                .args(args)
                .arg("--skip-build")
                .exec();
            bail!("running the release build of xtask: {err}");
        }
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
        for p in [ORIGIN_NONO, ORIGIN_NONO_DIAG, BULK_PORT, ECHO_PORT] {
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
    println!(
        "versions: {} | {}",
        tools.tinyproxy_version, tools.squid_version
    );

    let mut report = String::new();
    let result = sections(
        &opts,
        &net,
        &tmp,
        &server,
        &tools,
        &agent,
        &auth,
        &nono_args,
        &mut report,
    );
    drop(server);
    drop(net);
    drop(tmp);
    println!("{report}");
    result?;
    println!("\nbench-proxy finished in {:.0?}", started.elapsed());
    Ok(())
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
    auth: &str,
    nono_args: &dyn Fn(u16) -> Vec<String>,
    report: &mut String,
) -> Result<()> {
    if opts.wants("tunnel") || opts.wants("http") {
        let nono = Proc::spawn_in(
            &net.cli,
            "nono-agent proxy",
            Command::new(agent).args(nono_args(PORT_NONO)),
            &tmp.path.join("nono.log"),
        )?;
        let tiny = start_tinyproxy(net, tmp, tools)?;
        let squid = start_squid(net, tmp, tools)?;
        for (name, port) in [
            ("nono-agent proxy", PORT_NONO),
            ("tinyproxy", PORT_TINYPROXY),
            ("squid", PORT_SQUID),
        ] {
            wait_port(&net.cli, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).with_context(
                || {
                    format!(
                        "{name} did not start listening (logs in {})",
                        tmp.path.display()
                    )
                },
            )?;
        }
        let proxies = [
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
        for p in &proxies {
            sanity_check(&net.cli, p)?;
        }
        if opts.wants("tunnel") {
            let t = bench_tunnels(net, opts, &proxies)?;
            report.push_str(&t);
        }
        if opts.wants("http") {
            let h = bench_http(net, opts, tmp, server, &tools.wrk, &proxies)?;
            report.push_str(&h);
        }
        drop(squid);
        drop(tiny);
        drop(nono);
    }

    if opts.wants("memory") {
        let m = bench_memory(net, opts, agent, tmp, nono_args, auth)?;
        report.push_str(&m);
    }

    Ok(())
}

// ---------------------------------------------------------------------------
// Tools

struct Tools {
    wrk: PathBuf,
    tinyproxy: PathBuf,
    squid: PathBuf,
    tinyproxy_version: String,
    squid_version: String,
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Finds wrk, tinyproxy and squid; installs the missing ones with apt-get
/// (services are kept from starting with a temporary policy-rc.d).
fn ensure_tools(install: bool) -> Result<Tools> {
    for tool in ["ip", "nsenter"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: apt-get install iproute2 util-linux");
        }
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(bin, _)| which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        let cmd = format!(
            "apt-get install -y --no-install-recommends {}",
            missing.join(" ")
        );
        if !install || which("apt-get").is_none() {
            bail!("bench-proxy needs {}: {cmd}", missing.join(", "));
        }
        println!("bench-proxy: installing {} ({cmd})", missing.join(", "));
        // Keep the packages' init scripts from starting tinyproxy/squid as
        // system services (they would listen on the host's network).
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let created = if policy.exists() {
            false
        } else {
            std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
            std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            true
        };
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        if created {
            let _ = std::fs::remove_file(policy);
        }
        let status = status.context("running apt-get")?;
        if !status.success() {
            bail!("apt-get failed ({status}); try `apt-get update` first, then: {cmd}");
        }
    }
    let find = |n: &str| which(n).with_context(|| format!("{n} not found after installing"));
    let first_line = |bin: &Path, arg: &str| -> String {
        Command::new(bin)
            .arg(arg)
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).to_string()
                    + &String::from_utf8_lossy(&o.stderr);
                s.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    let tinyproxy = find("tinyproxy")?;
    let squid = find("squid")?;
    Ok(Tools {
        wrk: find("wrk")?,
        tinyproxy_version: first_line(&tinyproxy, "-v"),
        squid_version: first_line(&squid, "-v"),
        tinyproxy,
        squid,
    })
}

// ---------------------------------------------------------------------------
// Clean-up: guards, plus a signal thread for Ctrl-C.

static CLEANUP: Mutex<Registry> = Mutex::new(Registry {
    pgids: Vec::new(),
    netns: Vec::new(),
    dirs: Vec::new(),
});

struct Registry {
    pgids: Vec<i32>,
    netns: Vec<String>,
    dirs: Vec<PathBuf>,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner())
}

fn block_signals() -> Result<()> {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        // Threads spawned later inherit the mask; std::process::Command
        // resets it in children.
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("pthread_sigmask failed");
        }
    }
    Ok(())
}

/// Waits for SIGINT/SIGTERM/SIGHUP, removes everything, exits.
fn signal_thread() {
    // SAFETY: sigwait on a local, initialised set.
    let sig = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    };
    eprintln!("\nbench-proxy: signal {sig}, cleaning up");
    let r = registry();
    for &pg in &r.pgids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-pg, libc::SIGKILL) };
    }
    for ns in &r.netns {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
    }
    for d in &r.dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    std::process::exit(128 + sig);
}

/// A child process in its own process group, killed (with its group) on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Runs `cmd` inside network namespace `ns` (through nsenter, which
    /// execs, so the pid is the program's), output to `log`.
    fn spawn_in(ns: &str, name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .arg(cmd.get_program())
            .args(cmd.get_args());
        Self::spawn(name, &mut c, log)
    }

    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        die_with_parent(cmd);
        // Hold the registry lock across spawn so a signal cannot slip in
        // between fork and registration.
        let mut r = registry();
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        r.pgids.push(child.id() as i32);
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Fails if the process already exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} exited early: {st}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.pid();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        registry().pgids.retain(|&p| p != pid);
    }
}

/// Runs a command to completion in its own process group (killed on
/// Ctrl-C) and returns its output.
fn run_registered(cmd: &mut Command) -> Result<std::process::Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    die_with_parent(cmd);
    let child = {
        let mut r = registry();
        let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        r.pgids.push(child.id() as i32);
        child
    };
    let pid = child.id() as i32;
    let out = child.wait_with_output();
    registry().pgids.retain(|&p| p != pid);
    Ok(out?)
}

/// SIGKILL the child if this process dies (even by SIGKILL). Programs that
/// change credentials (squid) lose this; the stale-namespace sweep of the
/// next run catches them.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("nono-bench-proxy.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path)?;
        // squid drops to its own user and must reach its files below.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        registry().dirs.push(path.clone());
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
        registry().dirs.retain(|d| d != &self.path);
    }
}

// ---------------------------------------------------------------------------
// Network namespaces

struct Net {
    cli: String,
    srv: String,
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    fn create() -> Result<Self> {
        let pid = std::process::id();
        let net = Self {
            cli: format!("nbp{pid}c"),
            srv: format!("nbp{pid}s"),
        };
        for ns in [&net.cli, &net.srv] {
            let mut r = registry();
            sh(&["ip", "netns", "add", ns])?;
            r.netns.push(ns.clone());
        }
        let (a, b) = (format!("nbp{pid}a"), format!("nbp{pid}b"));
        sh(&[
            "ip", "link", "add", &a, "netns", &net.cli, "type", "veth", "peer", "name", &b,
            "netns", &net.srv,
        ])?;
        let in_ns = |ns: &str, args: &[&str]| -> Result<()> {
            let netarg = format!("--net=/run/netns/{ns}");
            let mut v = vec!["nsenter", netarg.as_str()];
            v.extend_from_slice(args);
            sh(&v)
        };
        let (ca, sa) = (format!("{CLIENT_V4}/24"), format!("{SERVER_V4}/24"));
        in_ns(&net.cli, &["ip", "link", "set", "lo", "up"])?;
        in_ns(&net.srv, &["ip", "link", "set", "lo", "up"])?;
        in_ns(&net.cli, &["ip", "addr", "add", &ca, "dev", &a])?;
        in_ns(&net.srv, &["ip", "addr", "add", &sa, "dev", &b])?;
        in_ns(&net.cli, &["ip", "link", "set", &a, "up"])?;
        in_ns(&net.srv, &["ip", "link", "set", &b, "up"])?;
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.cli, &self.srv] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            registry().netns.retain(|n| n != ns);
        }
    }
}

/// Removes namespaces left by a bench-proxy run that died (SIGKILL).
fn sweep_stale_netns() {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("nbp")
            .and_then(|r| r.strip_suffix('c').or_else(|| r.strip_suffix('s')))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !bench_alive(pid) {
            eprintln!("bench-proxy: removing stale network namespace {name} and its processes");
            kill_processes_in_netns(&format!("/run/netns/{name}"));
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            let _ = std::fs::remove_dir_all(
                std::env::temp_dir().join(format!("nono-bench-proxy.{pid}")),
            );
        }
    }
}

/// Whether `pid` is a running bench-proxy (a zombie has no command line).
fn bench_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"bench-proxy"))
}

/// SIGKILLs every process whose network namespace is the one at `path`
/// (proxies left behind by a run that was SIGKILLed).
fn kill_processes_in_netns(path: &str) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(ino) = std::fs::metadata(path).map(|m| m.ino()) else {
        return;
    };
    let want = format!("net:[{ino}]");
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net"));
        if ns.is_ok_and(|l| l.as_os_str() == want.as_str()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Runs `f` on a fresh thread that joined network namespace `ns`; sockets
/// created there stay in it.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_netns(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
}

fn enter_netns(path: &str) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn wait_port(ns: &str, addr: SocketAddr) -> Result<()> {
    in_netns(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => bail!("connect to {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}

fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

// ---------------------------------------------------------------------------
// The server namespace: HTTP origins, bulk sink/source, echo.

struct Server {
    /// Accepted connections per HTTP origin port.
    accepts: HashMap<u16, Arc<AtomicU64>>,
    /// Requests answered per HTTP origin port.
    requests: HashMap<u16, Arc<AtomicU64>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str) -> Result<Self> {
        let path = format!("/run/netns/{ns}");
        let ports = [
            ORIGIN_DIRECT,
            ORIGIN_NONO,
            ORIGIN_TINYPROXY,
            ORIGIN_SQUID,
            ORIGIN_NONO_DIAG,
        ];
        let accepts: HashMap<u16, Arc<AtomicU64>> =
            ports.iter().map(|&p| (p, Arc::default())).collect();
        let requests: HashMap<u16, Arc<AtomicU64>> =
            ports.iter().map(|&p| (p, Arc::default())).collect();
        let (a2, r2) = (accepts.clone(), requests.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::spawn(move || {
            let rt = match enter_netns(&path).and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(Into::into)
            }) {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let bind =
                    |port: u16| tokio::net::TcpListener::bind(SocketAddrV4::new(SERVER_V4, port));
                let mut listeners = Vec::new();
                for p in ports.iter().chain(&[BULK_PORT, ECHO_PORT]) {
                    match bind(*p).await {
                        Ok(l) => listeners.push((*p, l)),
                        Err(e) => {
                            let _ =
                                ready_tx.send(Err(anyhow::anyhow!("bind {SERVER_V4}:{p}: {e}")));
                            return;
                        }
                    }
                }
                for (port, l) in listeners {
                    let acc = a2.get(&port).cloned();
                    let req = r2.get(&port).cloned();
                    tokio::spawn(async move {
                        loop {
                            let Ok((s, _)) = l.accept().await else {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            };
                            let _ = s.set_nodelay(true);
                            match (port, &acc, &req) {
                                (BULK_PORT, _, _) => {
                                    tokio::spawn(bulk_conn(s));
                                }
                                (ECHO_PORT, _, _) => {
                                    tokio::spawn(echo_conn(s));
                                }
                                (_, Some(a), Some(r)) => {
                                    a.fetch_add(1, Ordering::Relaxed);
                                    tokio::spawn(http_conn(s, r.clone()));
                                }
                                _ => {}
                            }
                        }
                    });
                }
                let _ = ready_tx.send(Ok(()));
                let _ = stop_rx.await;
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the server thread did not start")??;
        Ok(Self {
            accepts,
            requests,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    fn counts(&self, port: u16) -> (u64, u64) {
        (
            self.accepts[&port].load(Ordering::Relaxed),
            self.requests[&port].load(Ordering::Relaxed),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn find_subslice(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// A minimal HTTP/1.x origin: answers every request with [`BODY`], keeps
/// the connection open unless the request asks otherwise (HTTP/1.0 without
/// keep-alive, or `Connection: close`). Handles pipelining.
async fn http_conn(mut s: tokio::net::TcpStream, requests: Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut rd = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut close = false;
        while let Some(end) = find_subslice(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let mut lines = head.split("\r\n");
            let http10 = lines.next().is_some_and(|l| l.ends_with("http/1.0"));
            let mut conn_close = http10;
            let mut body_len = 0usize;
            for l in lines {
                if let Some((k, v)) = l.split_once(':') {
                    let v = v.trim();
                    match k.trim() {
                        "connection" | "proxy-connection" => {
                            if v.contains("close") {
                                conn_close = true;
                            } else if v.contains("keep-alive") {
                                conn_close = false;
                            }
                        }
                        "content-length" => body_len = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            if buf.len() < end + 4 + body_len {
                break;
            }
            buf.drain(..end + 4 + body_len);
            requests.fetch_add(1, Ordering::Relaxed);
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
                BODY.len(),
                if conn_close {
                    "Connection: close\r\n"
                } else if http10 {
                    "Connection: keep-alive\r\n"
                } else {
                    ""
                }
            );
            out.extend_from_slice(BODY);
            if conn_close {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = s.shutdown().await;
            return;
        }
        match s.read(&mut rd).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&rd[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    }
}

/// Bulk protocol: 1 byte `U` or `D`, then the size as u64 little endian.
/// `U`: the server reads that many bytes, then answers the count (u64 LE).
/// `D`: the server sends that many bytes and half-closes.
async fn bulk_conn(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut hdr = [0u8; 9];
    if s.read_exact(&mut hdr).await.is_err() {
        return;
    }
    let size = u64::from_le_bytes(hdr[1..9].try_into().unwrap_or_default());
    let mut buf = vec![0x5au8; 256 * 1024];
    match hdr[0] {
        b'U' => {
            let mut got = 0u64;
            while got < size {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n as u64,
                }
            }
            let _ = s.write_all(&got.to_le_bytes()).await;
            let _ = s.shutdown().await;
        }
        b'D' => {
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
            let _ = s.shutdown().await;
            // Wait for the client to close so the last bytes are not reset.
            let _ = s.read(&mut buf).await;
        }
        _ => {}
    }
}

async fn echo_conn(mut s: tokio::net::TcpStream) {
    let (mut r, mut w) = s.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

// ---------------------------------------------------------------------------
// Proxies

#[derive(Clone)]
struct ProxyUnderTest {
    name: &'static str,
    port: u16,
    /// host:port requested in absolute-form URLs.
    http_authority: String,
    origin_port: u16,
    /// host:port for CONNECT.
    tunnel_target: String,
    /// Proxy-Authorization value.
    auth: Option<String>,
    pid: i32,
}

impl ProxyUnderTest {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    fn connect_request(&self) -> String {
        let mut r = format!(
            "CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n",
            t = self.tunnel_target
        );
        if let Some(a) = &self.auth {
            let _ = write!(r, "Proxy-Authorization: {a}\r\n");
        }
        r.push_str("\r\n");
        r
    }
}

fn start_tinyproxy(net: &Net, tmp: &TempDir, tools: &Tools) -> Result<Proc> {
    let dir = tmp.path.join("tinyproxy");
    std::fs::create_dir(&dir)?;
    let filter = dir.join("filter");
    // Exactly the origin's address (tinyproxy resolves names through the
    // system resolver, which this benchmark must not use).
    std::fs::write(
        &filter,
        format!("^{}$\n", SERVER_V4.to_string().replace('.', "\\.")),
    )?;
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {PORT_TINYPROXY}\nListen 127.0.0.1\nTimeout 600\nMaxClients 2048\n\
             LogLevel Critical\nLogFile \"{log}\"\nPidFile \"{pid}\"\n\
             Allow 127.0.0.1\nDisableViaHeader Yes\n\
             Filter \"{filter}\"\nFilterType ere\nFilterURLs Off\nFilterDefaultDeny Yes\n\
             ConnectPort {BULK_PORT}\n",
            log = dir.join("tinyproxy.log").display(),
            pid = dir.join("tinyproxy.pid").display(),
            filter = filter.display(),
        ),
    )?;
    let mut p = Proc::spawn_in(
        &net.cli,
        "tinyproxy",
        Command::new(&tools.tinyproxy)
            .arg("-d")
            .arg("-c")
            .arg(&conf),
        &dir.join("stderr.log"),
    )?;
    std::thread::sleep(Duration::from_millis(100));
    p.check_alive()?;
    Ok(p)
}

fn start_squid(net: &Net, tmp: &TempDir, tools: &Tools) -> Result<Proc> {
    let dir = tmp.path.join("squid");
    std::fs::create_dir(&dir)?;
    // squid switches to its own user (cache_effective_user) and must write here.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, format!("{SERVER_V4} {DOMAIN}\n"))?;
    let conf = dir.join("squid.conf");
    std::fs::write(
        &conf,
        format!(
            "http_port 127.0.0.1:{PORT_SQUID}\n\
             visible_hostname nono-bench\n\
             pid_filename none\n\
             cache_log {log}\n\
             access_log none\n\
             cache_store_log none\n\
             logfile_rotate 0\n\
             coredump_dir {dir}\n\
             netdb_filename none\n\
             pinger_enable off\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             hosts_file {hosts}\n\
             dns_nameservers 127.0.0.1\n\
             shutdown_lifetime 0 seconds\n\
             acl bench_dst dstdomain {DOMAIN}\n\
             acl bench_ports port {ORIGIN_SQUID} {BULK_PORT}\n\
             http_access allow bench_dst bench_ports\n\
             http_access deny all\n",
            log = dir.join("cache.log").display(),
            dir = dir.display(),
            hosts = hosts.display(),
        ),
    )?;
    let mut p = Proc::spawn_in(
        &net.cli,
        "squid",
        Command::new(&tools.squid).arg("-N").arg("-f").arg(&conf),
        &dir.join("stderr.log"),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    p.check_alive().with_context(|| {
        format!(
            "squid failed to start; see {}",
            dir.join("cache.log").display()
        )
    })?;
    Ok(p)
}

/// One request through `p` (and one CONNECT), checked, before measuring.
fn sanity_check(cli: &str, p: &ProxyUnderTest) -> Result<()> {
    let addr = p.addr();
    let mut req = format!(
        "GET http://{a}/ HTTP/1.1\r\nHost: {a}\r\n",
        a = p.http_authority
    );
    if let Some(a) = &p.auth {
        let _ = write!(req, "Proxy-Authorization: {a}\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    let name = p.name;
    let connect = p.connect_request();
    in_netns(cli, move || {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(req.as_bytes())?;
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp);
        if !text.starts_with("HTTP/1.") || !text.contains("nono-bench-origin") {
            bail!(
                "{name}: a GET through it did not reach the origin:\n{}",
                text.lines().take(12).collect::<Vec<_>>().join("\n")
            );
        }
        let s = open_tunnel(addr, &connect)
            .with_context(|| format!("{name}: CONNECT to the bulk server"))?;
        drop(s);
        Ok(())
    })
}

/// Connects to a proxy and opens a CONNECT tunnel (blocking).
fn open_tunnel(proxy: SocketAddr, connect: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(connect.as_bytes())?;
    // Byte by byte, so no tunnelled byte is consumed with the head.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 || head.len() > 16 * 1024 {
            bail!(
                "proxy closed before answering CONNECT: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head);
    if status.split_whitespace().nth(1) != Some("200") {
        bail!(
            "CONNECT refused: {}",
            status.lines().next().unwrap_or_default()
        );
    }
    s.set_read_timeout(None)?;
    Ok(s)
}

// ---------------------------------------------------------------------------
// 1. Tunnel throughput

#[derive(Clone, Copy, PartialEq)]
enum Dir {
    Up,
    Down,
}

/// One transfer of `bytes`; returns MB/s (10^6 bytes per second).
fn transfer(mut s: TcpStream, dir: Dir, bytes: u64) -> Result<f64> {
    let mut hdr = [0u8; 9];
    hdr[0] = if dir == Dir::Up { b'U' } else { b'D' };
    hdr[1..].copy_from_slice(&bytes.to_le_bytes());
    let mut buf = vec![0xa5u8; 256 * 1024];
    let t = Instant::now();
    s.write_all(&hdr)?;
    match dir {
        Dir::Up => {
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..n])?;
                left -= n as u64;
            }
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack)?;
            if u64::from_le_bytes(ack) != bytes {
                bail!(
                    "server received {} of {bytes} bytes",
                    u64::from_le_bytes(ack)
                );
            }
        }
        Dir::Down => {
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            if got != bytes {
                bail!("received {got} of {bytes} bytes");
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = s.shutdown(Shutdown::Both);
    Ok(bytes as f64 / secs / 1e6)
}

/// One transfer's figures.
#[derive(Clone, Copy, Default)]
struct Transfer {
    mbps: f64,
    /// CPU seconds the proxy process used per GiB moved.
    proxy_cpu_per_gib: Option<f64>,
    /// Share of the machine's CPUs busy during the transfer (0..1).
    machine_busy: f64,
}

/// (busy, total) jiffies of all CPUs, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn bench_tunnels(net: &Net, opts: &Opts, proxies: &[ProxyUnderTest]) -> Result<String> {
    let bytes = opts.mib * 1024 * 1024;
    println!(
        "\n[1/3] tunnel throughput: {} MiB each way, best of {} (direct and ours alternate)...",
        opts.mib, opts.rounds
    );
    let direct = SocketAddr::from((SERVER_V4, BULK_PORT));
    let tck = clock_ticks();
    let measure = |via: Option<&ProxyUnderTest>, dir: Dir| -> Result<Transfer> {
        let pid = via.map(|p| p.pid);
        let via = via.map(|p| (p.addr(), p.connect_request()));
        let cpu0 = pid.map(cpu_ticks);
        let m0 = machine_jiffies();
        let mbps = in_netns(&net.cli, move || {
            let s = match &via {
                None => {
                    let s = TcpStream::connect(direct)?;
                    s.set_nodelay(true)?;
                    s
                }
                Some((addr, req)) => open_tunnel(*addr, req)?,
            };
            transfer(s, dir, bytes)
        })?;
        let m1 = machine_jiffies();
        let gib = bytes as f64 / f64::from(1u32 << 30);
        Ok(Transfer {
            mbps,
            proxy_cpu_per_gib: pid
                .zip(cpu0)
                .map(|(p, c0)| (cpu_ticks(p) - c0) as f64 / tck / gib),
            machine_busy: (m1.0 - m0.0) as f64 / (m1.1 - m0.1).max(1) as f64,
        })
    };
    let nono = &proxies[0];
    let mut best: HashMap<(&str, bool), Transfer> = HashMap::new();
    let mut keep = |k: (&'static str, bool), v: Transfer| {
        let e = best.entry(k).or_default();
        if v.mbps > e.mbps {
            *e = v;
        }
    };
    for round in 0..opts.rounds {
        for dir in [Dir::Up, Dir::Down] {
            let up = dir == Dir::Up;
            if round % 2 == 0 {
                keep(("direct", up), measure(None, dir)?);
                keep((nono.name, up), measure(Some(nono), dir)?);
            } else {
                keep((nono.name, up), measure(Some(nono), dir)?);
                keep(("direct", up), measure(None, dir)?);
            }
        }
    }
    // The other proxies once, for context.
    for p in &proxies[1..] {
        for dir in [Dir::Up, Dir::Down] {
            match measure(Some(p), dir) {
                Ok(v) => keep((p.name, dir == Dir::Up), v),
                Err(e) => eprintln!("bench-proxy: {} tunnel failed: {e:#}", p.name),
            }
        }
    }
    let mut out = format!(
        "\n== 1. CONNECT tunnel bulk throughput, {} MiB per transfer, MB/s (10^6 B/s), best of {} for direct and ours ==\n",
        opts.mib, opts.rounds
    );
    let _ = writeln!(
        out,
        "{:<28} {:>8} {:>9} {:>10} {:>10} {:>14} {:>14}",
        "path", "upload", "download", "up/direct", "down/direct", "proxy CPU s/GiB", "machine busy"
    );
    let (du, dd) = (best[&("direct", true)].mbps, best[&("direct", false)].mbps);
    let mut row = |name: &str, label: &str| {
        let (u, d) = (best.get(&(name, true)), best.get(&(name, false)));
        let f = |v: Option<&Transfer>| v.map_or("failed".to_string(), |v| format!("{:.0}", v.mbps));
        let r = |v: Option<&Transfer>, base: f64| {
            v.map_or("-".to_string(), |v| format!("{:.2}x", v.mbps / base))
        };
        let both = |g: &dyn Fn(&Transfer) -> String| {
            format!(
                "{}/{}",
                u.map_or("-".to_string(), g),
                d.map_or("-".to_string(), g)
            )
        };
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>9} {:>10} {:>10} {:>14} {:>14}",
            label,
            f(u),
            f(d),
            r(u, du),
            r(d, dd),
            both(&|t| t
                .proxy_cpu_per_gib
                .map_or("-".to_string(), |c| format!("{c:.2}"))),
            both(&|t| format!("{:.0}%", t.machine_busy * 100.0)),
        );
    };
    row("direct", "direct (veth, no proxy)");
    row(nono.name, "nono-agent proxy CONNECT");
    row("tinyproxy", "tinyproxy CONNECT (1 run)");
    row("squid", "squid CONNECT (1 run)");
    let _ = writeln!(
        out,
        "CPU and busy columns are upload/download. goal: nono-agent >= 0.90x direct"
    );
    Ok(out)
}

// ---------------------------------------------------------------------------
// 2. HTTP request rate and latency (wrk)

struct WrkResult {
    requests: u64,
    duration_us: f64,
    /// Socket errors: connect, read, write, timeout.
    errors: [u64; 4],
    non2xx: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

fn wrk_script(path: &Path, p: Option<&ProxyUnderTest>) -> Result<()> {
    let mut s = String::new();
    if let Some(p) = p {
        let _ = writeln!(s, "wrk.method = \"GET\"");
        let _ = writeln!(s, "wrk.path = \"http://{}/\"", p.http_authority);
        let _ = writeln!(s, "wrk.headers[\"Host\"] = \"{}\"", p.http_authority);
        if let Some(a) = &p.auth {
            let _ = writeln!(s, "wrk.headers[\"Proxy-Authorization\"] = \"{a}\"");
        }
    }
    s.push_str(
        r#"function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("NONO_RESULT %d %d %d %d %d %d %d %.0f %.0f %.0f\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#,
    );
    std::fs::write(path, s)?;
    Ok(())
}

fn run_wrk(
    net: &Net,
    wrk: &Path,
    opts: &Opts,
    script: &Path,
    url: &str,
    secs: u64,
) -> Result<WrkResult> {
    let out = run_registered(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.cli))
            .arg(wrk)
            .arg(format!("-t{}", opts.wrk_threads))
            .arg(format!("-c{}", opts.connections))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "5s", "-s"])
            .arg(script)
            .arg(url),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("NONO_RESULT "))
        .with_context(|| {
            format!(
                "wrk printed no result ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0))
        .collect();
    if v.len() != 10 {
        bail!("unexpected wrk result line {line:?}");
    }
    Ok(WrkResult {
        requests: v[0] as u64,
        duration_us: v[1],
        errors: [v[2] as u64, v[3] as u64, v[4] as u64, v[6] as u64],
        non2xx: v[5] as u64,
        p50_us: v[7],
        p99_us: v[8],
        max_us: v[9],
    })
}

fn cpu_ticks(pid: i32) -> u64 {
    let (u, s) = cpu_split(pid);
    u + s
}

/// (user, system) CPU clock ticks of a process.
fn cpu_split(pid: i32) -> (u64, u64) {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0, 0);
    };
    let Some(rest) = s.rsplit_once(')').map(|x| x.1) else {
        return (0, 0);
    };
    // Fields after the command: state(3) ... utime(14) stime(15).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    (get(11), get(12))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// VmRSS, VmHWM (KiB) and thread count from /proc/PID/status.
fn mem_status(pid: i32) -> (u64, u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
}

/// TCP sockets in TIME_WAIT in the client namespace.
fn time_wait(net: &Net) -> u64 {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.cli))
        .args(["cat", "/proc/net/sockstat"])
        .output();
    let Ok(out) = out else { return 0 };
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|&x| x == "tw")
                .and_then(|i| f.get(i + 1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Sets a sysctl in the client namespace; returns the previous value.
fn cli_sysctl(net: &Net, key: &str, value: &str) -> Result<String> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    in_netns(&net.cli, move || {
        let old = std::fs::read_to_string(&path)?.trim().to_string();
        std::fs::write(&path, &value)?;
        Ok(old)
    })
}

struct HttpRow {
    label: String,
    proxy: Option<ProxyUnderTest>,
    /// Diagnostic: net.ipv4.tcp_tw_reuse=1 in the client namespace.
    tw_reuse: bool,
}

fn bench_http(
    net: &Net,
    opts: &Opts,
    tmp: &TempDir,
    server: &Server,
    wrk: &Path,
    proxies: &[ProxyUnderTest],
) -> Result<String> {
    println!(
        "\n[2/3] HTTP: wrk -t{} -c{} -d{}s per row (1 s warm-up each)...",
        opts.wrk_threads, opts.connections, opts.duration
    );
    let mut out = format!(
        "\n== 2. HTTP GET, absolute-form over keep-alive client connections: wrk -t{} -c{} -d{}s, {}-byte responses ==\n",
        opts.wrk_threads,
        opts.connections,
        opts.duration,
        BODY.len()
    );
    let _ = writeln!(
        out,
        "{:<34} {:>8} {:>8} {:>8} {:>8} {:>16} {:>7} {:>8} {:>9} {:>5} {:>8} {:>9}",
        "client path",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errs c/r/w/t",
        "non-2xx",
        "orig conn",
        "CPU µs/rq",
        "sys%",
        "RSS MB",
        "new TW"
    );
    let tck = clock_ticks();
    let mut rows = vec![HttpRow {
        label: "direct (no proxy)".into(),
        proxy: None,
        tw_reuse: false,
    }];
    for p in proxies {
        rows.push(HttpRow {
            label: p.name.into(),
            proxy: Some(p.clone()),
            tw_reuse: false,
        });
    }
    // The same proxy once more, with TIME_WAIT reuse allowed for its
    // connections to the origin (own origin port: fresh 4-tuples).
    let mut diag = proxies[0].clone();
    diag.http_authority = format!("{DOMAIN}:{ORIGIN_NONO_DIAG}");
    diag.origin_port = ORIGIN_NONO_DIAG;
    rows.push(HttpRow {
        label: "nono-agent, tcp_tw_reuse=1 (diag)".into(),
        proxy: Some(diag),
        tw_reuse: true,
    });
    let mut notes = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let p = row.proxy.as_ref();
        let label = &row.label;
        let script = tmp.path.join(format!("wrk-{i}.lua"));
        wrk_script(&script, p)?;
        let (url, origin_port) = match p {
            None => (
                format!("http://{SERVER_V4}:{ORIGIN_DIRECT}/"),
                ORIGIN_DIRECT,
            ),
            Some(p) => (format!("http://127.0.0.1:{}/", p.port), p.origin_port),
        };
        let old = if row.tw_reuse {
            Some(cli_sysctl(net, "net.ipv4.tcp_tw_reuse", "1")?)
        } else {
            None
        };
        run_wrk(net, wrk, opts, &script, &url, 1)?;
        let (acc0, req0) = server.counts(origin_port);
        let cpu0 = p.map(|p| cpu_split(p.pid));
        let tw0 = time_wait(net);
        let r = run_wrk(net, wrk, opts, &script, &url, opts.duration);
        if let Some(old) = old {
            cli_sysctl(net, "net.ipv4.tcp_tw_reuse", &old)?;
        }
        let r = r?;
        let (acc1, req1) = server.counts(origin_port);
        let tw = time_wait(net).saturating_sub(tw0);
        let rate = r.requests as f64 / (r.duration_us / 1e6);
        let (cpu, sys, rss) = match (p, cpu0) {
            (Some(p), Some((u0, s0))) => {
                let (u1, s1) = cpu_split(p.pid);
                let (u, s) = (u1 - u0, s1 - s0);
                let used = (u + s) as f64 / tck;
                (
                    format!("{:.1}", used * 1e6 / r.requests.max(1) as f64),
                    format!("{:.0}", 100.0 * s as f64 / (u + s).max(1) as f64),
                    format!("{:.1}", mem_status(p.pid).0 as f64 / 1024.0),
                )
            }
            _ => ("-".into(), "-".into(), "-".into()),
        };
        let conns = acc1 - acc0;
        let e = r.errors;
        let _ = writeln!(
            out,
            "{:<34} {:>8.0} {:>8.2} {:>8.2} {:>8.1} {:>16} {:>7} {:>8} {:>9} {:>5} {:>8} {:>9}",
            label,
            rate,
            r.p50_us / 1e3,
            r.p99_us / 1e3,
            r.max_us / 1e3,
            format!("{}/{}/{}/{}", e[0], e[1], e[2], e[3]),
            r.non2xx,
            conns,
            cpu,
            sys,
            rss,
            tw
        );
        let origin_reqs = req1 - req0;
        if origin_reqs > 0 && conns * 2 > origin_reqs {
            notes.push(format!(
                "{label}: the origin accepted {conns} connections for {origin_reqs} requests \
                 ({:.2} per request): no keep-alive to the origin",
                conns as f64 / origin_reqs as f64
            ));
        }
        if e[1] * 2 > r.requests {
            notes.push(format!(
                "{label}: {} read errors for {} requests: it closes the client connection after \
                 every response (wrk reconnects; the requests themselves succeeded unless non-2xx)",
                e[1], r.requests
            ));
        }
    }
    let _ = writeln!(
        out,
        "orig conn = TCP connections the origin accepted during the run; CPU µs/rq = the proxy \
         process's user+system CPU per request, sys% = the kernel's share of it; new TW = sockets \
         that entered TIME_WAIT in the client namespace during the run (default \
         ip_local_port_range has 28232 ports)."
    );
    let _ = writeln!(
        out,
        "tinyproxy is given the origin's IP address (it can only resolve names through the \
         system resolver); ours and squid resolve {DOMAIN} without DNS (--resolve, hosts_file). \
         (diag) is not a configuration to ship: it shows how much the proxy's closing of its \
         origin connections (TIME_WAIT on its side) costs."
    );
    for n in notes {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(out, "goal: nono-agent ahead of tinyproxy and squid");
    Ok(out)
}

// ---------------------------------------------------------------------------
// 3. Memory with N open tunnels

fn bench_memory(
    net: &Net,
    opts: &Opts,
    agent: &Path,
    tmp: &TempDir,
    nono_args: &dyn Fn(u16) -> Vec<String>,
    auth: &str,
) -> Result<String> {
    let n = opts.tunnels;
    println!("\n[3/3] memory: a fresh standalone proxy, then {n} tunnels...");
    let port = PORT_NONO + 10;
    let mut proxy = Proc::spawn_in(
        &net.cli,
        "nono-agent proxy (memory)",
        Command::new(agent).args(nono_args(port)),
        &tmp.path.join("nono-mem.log"),
    )?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    wait_port(&net.cli, addr)?;
    std::thread::sleep(Duration::from_millis(300));
    proxy.check_alive()?;
    let pid = proxy.pid();
    let connect = format!(
        "CONNECT {DOMAIN}:{ECHO_PORT} HTTP/1.1\r\nHost: {DOMAIN}:{ECHO_PORT}\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    let samples = Arc::new(Mutex::new(Vec::<(String, (u64, u64, u64))>::new()));
    let sample = {
        let samples = samples.clone();
        move |label: String| {
            std::thread::sleep(Duration::from_millis(300));
            let m = mem_status(pid);
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((label, m));
        }
    };
    sample("0 tunnels (fresh process)".into());
    let result = in_netns(&net.cli, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let connect = Arc::new(connect);
            let mut tunnels = Vec::with_capacity(n);
            // Open in batches of 100 (the proxy's accept backlog is finite).
            let mut left = n;
            while left > 0 {
                let batch = left.min(100);
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..batch {
                    let c = connect.clone();
                    set.spawn(async move { tunnel_async(addr, &c, 4096).await });
                }
                while let Some(r) = set.join_next().await {
                    tunnels.push(r??);
                }
                left -= batch;
            }
            sample(format!("{n} tunnels open, 4 KiB echoed through each"));
            // Push 64 KiB each way through every tunnel, all at once.
            let mut set = tokio::task::JoinSet::new();
            for s in tunnels.drain(..) {
                set.spawn(async move {
                    let mut s = s;
                    echo(&mut s, 64 * 1024).await?;
                    anyhow::Ok(s)
                });
            }
            while let Some(r) = set.join_next().await {
                tunnels.push(r??);
            }
            sample(format!(
                "{n} tunnels open, after 64 KiB each way through each"
            ));
            drop(tunnels);
            tokio::time::sleep(Duration::from_secs(1)).await;
            sample(format!("0 tunnels (after closing the {n})"));
            anyhow::Ok(())
        })
    });
    proxy.check_alive()?;
    result?;
    let mut out = format!(
        "\n== 3. standalone proxy memory (/proc/PID/status), {n} CONNECT tunnels to an echo server ==\n"
    );
    let _ = writeln!(
        out,
        "{:<52} {:>9} {:>9} {:>14} {:>8}",
        "state", "VmRSS MB", "VmHWM MB", "KiB per tunnel", "threads"
    );
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner());
    let base = samples.first().map_or(0, |s| s.1 .0);
    for (i, (label, (rss, hwm, thr))) in samples.iter().enumerate() {
        let per = if (1..=2).contains(&i) && n > 0 {
            format!("{:.1}", rss.saturating_sub(base) as f64 / n as f64)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{label:<52} {:>9.1} {:>9.1} {per:>14} {thr:>8}",
            *rss as f64 / 1024.0,
            *hwm as f64 / 1024.0,
        );
    }
    let _ = writeln!(out, "goal: <= 30 MB with 1,000 open tunnels");
    drop(proxy);
    Ok(out)
}

async fn tunnel_async(
    proxy: SocketAddr,
    connect: &str,
    echo_bytes: usize,
) -> Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(proxy).await?;
    s.set_nodelay(true)?;
    s.write_all(connect.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 || head.len() > 16 * 1024 {
            bail!(
                "proxy closed before answering CONNECT: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head);
    if status.split_whitespace().nth(1) != Some("200") {
        bail!(
            "CONNECT refused: {}",
            status.lines().next().unwrap_or_default()
        );
    }
    echo(&mut s, echo_bytes).await?;
    Ok(s)
}

async fn echo(s: &mut tokio::net::TcpStream, bytes: usize) -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let data = vec![0x42u8; bytes];
    let (mut r, mut w) = s.split();
    let mut back = vec![0u8; bytes];
    let (wr, rd) = tokio::join!(w.write_all(&data), r.read_exact(&mut back));
    wr?;
    rd?;
    if back != data {
        bail!("echo came back different");
    }
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
