//! One selftest run: choose the enforcers, build the test host and the
//! oracle, run every vector outside any sandbox (the baseline) and inside a
//! sandbox of each enforcer, and judge what arrived.
//!
//! Every phase is one process started in the client namespace: the
//! baseline is `nono-agent __probe --plan ...`; a sandboxed phase is
//! `nono-agent exec --enforcer ... -- nono-agent __probe --plan ...`, the
//! real `exec` path a user gets. All phases run at once: each attempt has
//! its own port (ICMP id, frame tag) per phase, so the oracle attributes
//! what arrived exactly. Nothing here adds a way to weaken a sandbox:
//! selftest only starts ordinary `exec` runs.
//!
//! Children are started from the calling (main) thread: their
//! `PR_SET_PDEATHSIG` fires when the thread that started them ends.

use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::frames::Proto;
use super::oracle::{Oracle, Side};
use super::probe::{NetArgs, PlanItem};
use super::report::{
    judge_baseline, judge_control, judge_inside, outcome, Baseline, Cell, EnforcerKind,
    EnforcerReport, EnforcerStatus, HostInfo, ProbeSaid, Report, Row, RowKind, Seen, Verdict,
};
use super::testhost::{enter_before_exec, enter_own_userns, Addressing, TestHost, CAP_NET_RAW};
use super::vectors::{Mode, NetVector, Observe, Target, Vector, NETWORK_VECTORS};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The enforcers to test (empty: every one this host offers).
    pub enforcers: Vec<EnforcerKind>,
    pub daemon_socket: PathBuf,
    /// This binary (re-executed as the probe and as `exec`).
    pub exe: PathBuf,
}

/// How long one phase may take (a rerouted TCP connect waits 3 s).
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);

/// The controls: what a sandbox must still reach.
const CONTROLS: [Vector; 3] = [Vector::Loopback4, Vector::Loopback6, Vector::Proxy];

/// A phase: the baseline (index 0) or one enforcer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Outside,
    Inside(EnforcerKind),
}

impl Phase {
    fn index(self) -> u16 {
        match self {
            Phase::Outside => 0,
            Phase::Inside(EnforcerKind::Daemon) => 1,
            Phase::Inside(EnforcerKind::Bpf) => 2,
            Phase::Inside(EnforcerKind::Seccomp) => 3,
        }
    }

    /// Port of attempt `i` in this phase (ports only need to be unique in
    /// the run: the namespaces are selftest's own).
    fn port(self, i: usize) -> u16 {
        20000 + self.index() * 100 + i as u16
    }

    /// The endpoint sandboxes of this phase may reach (`--proxy-endpoint`).
    fn endpoint(self, a: &Addressing) -> SocketAddr {
        SocketAddr::new(a.server_v4.into(), 20000 + self.index() * 100 + 99)
    }

    fn id(self, i: usize) -> u16 {
        0x5e00 + self.index() * 100 + i as u16
    }

    fn tag(self, i: usize) -> String {
        format!(
            "NONO-SELFTEST-{:010}-{:02}-{i:03}",
            std::process::id(),
            self.index()
        )
    }
}

/// One row: an escape vector or a control.
#[derive(Debug, Clone, Copy)]
enum Item {
    Escape(NetVector),
    Control(Vector),
}

impl Item {
    fn name(&self) -> &'static str {
        match self {
            Item::Escape(v) => v.name,
            Item::Control(v) => v.name(),
        }
    }
}

fn items() -> Vec<Item> {
    NETWORK_VECTORS
        .iter()
        .copied()
        .map(Item::Escape)
        .chain(CONTROLS.iter().copied().map(Item::Control))
        .collect()
}

fn target_of(v: &NetVector, a: &Addressing) -> IpAddr {
    match v.target {
        Target::ServerV4 => a.server_v4.into(),
        Target::ServerV6 => a.server_v6.into(),
    }
}

/// The probe's arguments for attempt `i` of `phase`.
fn net_args(item: &Item, i: usize, phase: Phase, a: &Addressing) -> NetArgs {
    NetArgs {
        target: match item {
            Item::Escape(v) => Some(target_of(v, a)),
            Item::Control(_) => None,
        },
        port: Some(phase.port(i)),
        id: Some(phase.id(i)),
        iface: Some(a.veth_client.clone()),
        tag: Some(phase.tag(i)),
        count: None,
        proxy_endpoint: Some(phase.endpoint(a)),
        bytes: None,
    }
}

/// A started phase: its process's pid and the thread collecting its
/// output.
struct Running {
    phase: Phase,
    pid: i32,
    done: JoinHandle<std::io::Result<(std::process::ExitStatus, String, String)>>,
}

/// Runs selftest; `interrupted` is set by SIGINT/SIGTERM.
pub fn run(opts: &Options, interrupted: &AtomicBool) -> Report {
    let started = Instant::now();
    let mut enforcers = availability(opts);
    let finish = |enforcers: Vec<EnforcerReport>,
                  rows: Vec<Row>,
                  host: Option<HostInfo>,
                  error: Option<String>| {
        let (mut o, leaks, failures) = outcome(&rows, &enforcers, &opts.enforcers);
        if error.is_some() && o == super::report::Outcome::Pass {
            o = super::report::Outcome::CannotRun;
        }
        Report {
            version: crate::cli::VERSION.to_string(),
            outcome: o,
            exit_code: o.exit_code(),
            duration_ms: started.elapsed().as_millis() as u64,
            error,
            test_host: host,
            enforcers,
            vectors: rows,
            leaks,
            failures,
        }
    };
    let to_test: Vec<EnforcerKind> = enforcers
        .iter()
        .filter(|e| e.status == EnforcerStatus::Tested)
        .map(|e| e.enforcer)
        .collect();
    if to_test.is_empty() {
        return finish(
            enforcers,
            Vec::new(),
            None,
            Some("no enforcer to test".into()),
        );
    }
    // SAFETY: geteuid never fails.
    let unprivileged = unsafe { libc::geteuid() } != 0;
    if unprivileged {
        // Still single-threaded here (nothing above starts a thread).
        if let Err(e) = enter_own_userns() {
            let why = crate::util::chain(&e);
            for e in enforcers
                .iter_mut()
                .filter(|e| e.status == EnforcerStatus::Tested)
            {
                e.status = EnforcerStatus::NotTried;
                e.detail = format!("no test host: {why}");
            }
            return finish(
                enforcers,
                Vec::new(),
                None,
                Some(format!(
                    "the test host needs root or an unprivileged user namespace: {why}"
                )),
            );
        }
    }
    let addrs = Addressing::for_run(run_number());
    let mut host_info = HostInfo {
        client_v4: addrs.client_v4.to_string(),
        server_v4: addrs.server_v4.to_string(),
        client_v6: addrs.client_v6.to_string(),
        server_v6: addrs.server_v6.to_string(),
        client_netns: String::new(),
        server_netns: String::new(),
    };
    let host = match TestHost::create(addrs.clone()) {
        Ok(h) => {
            (host_info.client_netns, host_info.server_netns) = h.netns_ids();
            h
        }
        Err(e) => {
            return finish(
                enforcers,
                Vec::new(),
                Some(host_info),
                Some(format!(
                    "creating the test host: {}",
                    crate::util::chain(&e)
                )),
            )
        }
    };
    let oracle = match Oracle::start(&host) {
        Ok(o) => o,
        Err(e) => {
            return finish(
                enforcers,
                Vec::new(),
                Some(host_info),
                Some(format!("starting the oracle: {}", crate::util::chain(&e))),
            )
        }
    };
    let items = items();
    let phases: Vec<Phase> = std::iter::once(Phase::Outside)
        .chain(to_test.iter().map(|k| Phase::Inside(*k)))
        .collect();
    if let Err(e) = listen_all(&oracle, &items, &phases, &addrs) {
        return finish(enforcers, Vec::new(), Some(host_info), Some(e));
    }
    // Start every phase, then collect.
    let mut running = Vec::new();
    for &phase in &phases {
        match start_phase(opts, &host, &items, phase, &addrs) {
            Ok(r) => running.push(r),
            Err(e) => {
                if let Phase::Inside(k) = phase {
                    set_status(
                        &mut enforcers,
                        k,
                        EnforcerStatus::Error,
                        format!("could not start exec: {e}"),
                    );
                } else {
                    kill_all(&running);
                    return finish(
                        enforcers,
                        Vec::new(),
                        Some(host_info),
                        Some(format!("starting the probe: {e}")),
                    );
                }
            }
        }
    }
    let (outputs, signalled) = collect(running, interrupted);
    let outputs = match outputs {
        Ok(o) => o,
        Err(e) => {
            drop(oracle);
            drop(host);
            let e = match signalled.then(sweep_stale).flatten() {
                Some(s) => format!("{e}; {s}"),
                None => e,
            };
            return finish(enforcers, Vec::new(), Some(host_info), Some(e));
        }
    };
    if let Err(e) = oracle.settle() {
        return finish(
            enforcers,
            Vec::new(),
            Some(host_info),
            Some(crate::util::chain(&e)),
        );
    }
    // The baseline first, then each enforcer.
    let mut lines: std::collections::HashMap<u16, Vec<Value>> = Default::default();
    for (phase, out) in &outputs {
        let parsed = parse_lines(&out.1);
        if let Phase::Inside(k) = phase {
            let verdict = check_sandbox(*k, out, &parsed, items.len());
            match verdict {
                Ok(detail) => set_status(&mut enforcers, *k, EnforcerStatus::Tested, detail),
                Err(detail) => set_status(&mut enforcers, *k, EnforcerStatus::Error, detail),
            }
        }
        lines.insert(phase.index(), parsed);
    }
    let said = |phase: Phase, name: &str| -> Option<ProbeSaid> {
        lines
            .get(&phase.index())?
            .iter()
            .find(|l| l["vector"] == name)
            .map(|l| ProbeSaid {
                ok: l["ok"].as_bool().unwrap_or(false),
                errno: l["errno"].as_i64().map(|e| e as i32),
                detail: l["detail"].as_str().unwrap_or("").to_string(),
                refused_at: l["refused_at"].as_str().map(str::to_string),
            })
    };
    let mut rows = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let mut results = Vec::new();
        let (kind, baseline, baseline_detail) = match item {
            Item::Escape(v) => {
                let proof = proof(&oracle, v, Phase::Outside, i, &addrs);
                let (b, d) = judge_baseline(v, &proof, said(Phase::Outside, v.name).as_ref());
                (RowKind::Escape, b, d)
            }
            Item::Control(_) => (RowKind::Control, Baseline::Reached, String::new()),
        };
        let all: Vec<EnforcerKind> = enforcers.iter().map(|e| e.enforcer).collect();
        for k in all {
            if !to_test.contains(&k) {
                results.push(Cell {
                    enforcer: k,
                    verdict: Verdict::NotRun,
                    detail: "not tried".into(),
                });
                continue;
            }
            let phase = Phase::Inside(k);
            let tested = enforcers
                .iter()
                .any(|e| e.enforcer == k && e.status == EnforcerStatus::Tested);
            let (verdict, detail) = if !tested {
                (Verdict::NotRun, "the sandbox did not run".to_string())
            } else {
                let p = said(phase, item.name());
                match item {
                    Item::Escape(v) => {
                        judge_inside(baseline, &observed(&oracle, v, phase, i), p.as_ref())
                    }
                    Item::Control(c) => {
                        judge_control(&control_seen(&oracle, *c, phase, i), p.as_ref())
                    }
                }
            };
            // A leak counts even if the sandbox was otherwise broken.
            let verdict = if !tested {
                match item {
                    Item::Escape(v) if observed(&oracle, v, phase, i).count > 0 => Verdict::Leak,
                    _ => verdict,
                }
            } else {
                verdict
            };
            results.push(Cell {
                enforcer: k,
                verdict,
                detail,
            });
        }
        rows.push(Row {
            vector: item.name().to_string(),
            kind,
            baseline,
            baseline_detail,
            results,
        });
    }
    drop(oracle);
    drop(host);
    let error = signalled.then(sweep_stale).flatten();
    finish(enforcers, rows, Some(host_info), error)
}

/// A number for this run: the pid, mixed with the time so that two runs
/// in a row (a pid reused) differ.
fn run_number() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::process::id().wrapping_mul(2_654_435_761) ^ (t >> 8)
}

fn set_status(es: &mut [EnforcerReport], k: EnforcerKind, s: EnforcerStatus, detail: String) {
    for e in es.iter_mut().filter(|e| e.enforcer == k) {
        e.status = s;
        e.detail = detail.clone();
    }
}

/// Which enforcers to test and which not (and why). `Tested` here means
/// "to be tested"; the run sets the final status.
fn availability(opts: &Options) -> Vec<EnforcerReport> {
    let wanted = |k| opts.enforcers.is_empty() || opts.enforcers.contains(&k);
    let mut out = Vec::new();
    for k in EnforcerKind::ALL {
        if !wanted(k) {
            continue;
        }
        let (ok, detail) = match k {
            EnforcerKind::Daemon => daemon_answers(&opts.daemon_socket),
            EnforcerKind::Bpf => {
                if crate::sandbox::privileges::can_load_bpf() {
                    (
                        true,
                        "root: exec loads the programs itself (--no-daemon)".into(),
                    )
                } else {
                    (
                        false,
                        "loading BPF programs needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)"
                            .into(),
                    )
                }
            }
            EnforcerKind::Seccomp => {
                if crate::sandbox::privileges::seccomp_user_notif_available() {
                    (true, "exec --enforcer seccomp".into())
                } else {
                    (false, "the kernel has no seccomp user notification".into())
                }
            }
        };
        out.push(EnforcerReport {
            enforcer: k,
            status: if ok {
                EnforcerStatus::Tested
            } else {
                EnforcerStatus::NotTried
            },
            detail,
        });
    }
    out
}

fn daemon_answers(socket: &Path) -> (bool, String) {
    use crate::daemon::client::Client;
    match Client::connect(socket).map(|o| o.map(|mut c| c.status())) {
        Ok(None) => (false, format!("no daemon answers on {}", socket.display())),
        Ok(Some(Ok((version, _, _, _)))) => {
            (true, format!("daemon {version} on {}", socket.display()))
        }
        Ok(Some(Err(e))) | Err(e) => (
            false,
            format!(
                "no daemon answers on {}: {}",
                socket.display(),
                crate::util::chain(&e)
            ),
        ),
    }
}

/// Listeners for every TCP attempt, control and endpoint of every phase.
fn listen_all(o: &Oracle, items: &[Item], phases: &[Phase], a: &Addressing) -> Result<(), String> {
    let err =
        |e: super::oracle::OracleError| format!("oracle listeners: {}", crate::util::chain(&e));
    for &phase in phases {
        o.listen_tcp(Side::Server, phase.endpoint(a).port())
            .map_err(err)?;
        for (i, item) in items.iter().enumerate() {
            match item {
                Item::Escape(v) if matches!(v.observe, Observe::Tcp | Observe::RoutedTcp) => {
                    o.listen_tcp(Side::Server, phase.port(i)).map_err(err)?
                }
                Item::Control(Vector::Loopback4 | Vector::Loopback6) => o
                    .listen_tcp(Side::ClientLoopback, phase.port(i))
                    .map_err(err)?,
                _ => {}
            }
        }
    }
    Ok(())
}

fn start_phase(
    opts: &Options,
    host: &TestHost,
    items: &[Item],
    phase: Phase,
    a: &Addressing,
) -> std::io::Result<Running> {
    let plan: Vec<PlanItem> = items
        .iter()
        .enumerate()
        .map(|(i, item)| PlanItem {
            vector: item.name().to_string(),
            args: net_args(item, i, phase, a),
        })
        .collect();
    let plan = serde_json::to_string(&plan).map_err(std::io::Error::other)?;
    let mut cmd = Command::new(&opts.exe);
    if let Phase::Inside(k) = phase {
        cmd.arg("exec");
        match k {
            EnforcerKind::Daemon => {
                cmd.args(["--enforcer", "bpf", "--daemon-socket"])
                    .arg(&opts.daemon_socket);
            }
            EnforcerKind::Bpf => {
                cmd.args(["--enforcer", "bpf", "--no-daemon"]);
            }
            EnforcerKind::Seccomp => {
                cmd.args(["--enforcer", "seccomp", "--no-daemon"]);
            }
        }
        cmd.arg("--proxy-endpoint")
            .arg(phase.endpoint(a).to_string())
            .arg("--")
            .arg(&opts.exe);
    }
    cmd.args(["__probe", "--plan"]).arg(plan);
    // Its own process group: a terminal's Ctrl-C reaches selftest only,
    // which lets the phases finish (and clean up) before it ends.
    cmd.env_remove("NONO_AGENT_DAEMON_SOCKET")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The baseline probe of an unprivileged run keeps CAP_NET_RAW of
    // selftest's own user namespace, so raw and packet sockets can show
    // that they would reach the test host (a sandbox gets no capability).
    // SAFETY: geteuid never fails.
    let ambient: &[u32] = if phase == Phase::Outside && unsafe { libc::geteuid() } != 0 {
        &[CAP_NET_RAW]
    } else {
        &[]
    };
    enter_before_exec(&mut cmd, host.client(), ambient, None)?;
    let mut child: Child = cmd.spawn()?;
    let pid = child.id() as i32;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let done = std::thread::spawn(move || {
        let errs = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        let mut o = String::new();
        if let Some(out) = out.as_mut() {
            out.read_to_string(&mut o)?;
        }
        let status = child.wait()?;
        let e = errs.join().unwrap_or_default();
        Ok((status, o, e))
    });
    Ok(Running { phase, pid, done })
}

fn kill_all(running: &[Running]) {
    for r in running.iter().filter(|r| !r.done.is_finished()) {
        // SAFETY: signals our own child, which has not been waited for
        // (its collector thread is still running).
        unsafe { libc::kill(r.pid, libc::SIGTERM) };
    }
}

type PhaseOutput = (std::process::ExitStatus, String, String);

/// How long running phases may still finish on their own after SIGINT /
/// SIGTERM (a phase takes a few seconds; one that ends by itself removes
/// its sandbox normally).
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

/// Waits for every phase: at most [`PHASE_TIMEOUT`], or [`INTERRUPT_GRACE`]
/// after an interruption; then SIGTERM. Returns the outputs (or why there
/// are none) and whether a phase had to be signalled.
fn collect(
    running: Vec<Running>,
    interrupted: &AtomicBool,
) -> (Result<Vec<(Phase, PhaseOutput)>, String>, bool) {
    let mut deadline = Instant::now() + PHASE_TIMEOUT;
    let mut grace_set = false;
    let mut signalled = false;
    while running.iter().any(|r| !r.done.is_finished()) {
        if interrupted.load(Ordering::Relaxed) && !grace_set {
            deadline = deadline.min(Instant::now() + INTERRUPT_GRACE);
            grace_set = true;
        }
        if Instant::now() > deadline && !signalled {
            kill_all(&running);
            signalled = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if interrupted.load(Ordering::Relaxed) {
        return (Err("interrupted".into()), signalled);
    }
    let mut out = Vec::new();
    for r in running {
        let res = match r.done.join() {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => return (Err(format!("reading a phase's output: {e}")), signalled),
            Err(_) => return (Err("a collector thread panicked".into()), signalled),
        };
        out.push((r.phase, res));
    }
    (Ok(out), signalled)
}

/// After a phase was killed: removes sandboxes whose agent died (what
/// every `exec` and `nono-agent cleanup` do), so a direct-BPF sandbox
/// killed before it could clean up is not left behind.
fn sweep_stale() -> Option<String> {
    match crate::sandbox::sweep::sweep(Duration::from_secs(2)) {
        Ok(s) if s.errors.is_empty() => None,
        Ok(s) => Some(format!(
            "removing sandboxes of killed phases: {}",
            s.errors.join("; ")
        )),
        Err(e) => Some(format!(
            "removing sandboxes of killed phases: {}",
            crate::util::chain(&e)
        )),
    }
}

fn parse_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("vector").is_some())
        .collect()
}

/// Whether the phase's sandbox really ran the probe under enforcer `k`.
fn check_sandbox(
    k: EnforcerKind,
    out: &PhaseOutput,
    lines: &[Value],
    expected: usize,
) -> Result<String, String> {
    let (status, _, stderr) = out;
    let tail = || {
        stderr
            .lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ")
    };
    if lines.len() != expected {
        return Err(format!(
            "the sandboxed probe reported {} of {expected} attempts ({status}): {}",
            lines.len(),
            tail()
        ));
    }
    // exec names the daemon when it used it (and, with an explicit
    // --enforcer, prints no line otherwise).
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("nono-agent: enforcer: "))
        .unwrap_or("");
    let via_daemon = line.starts_with("bpf (daemon");
    if via_daemon != (k == EnforcerKind::Daemon) {
        return Err(format!(
            "exec {} the daemon, so this is not the {} enforcer: {}",
            if via_daemon { "used" } else { "did not use" },
            k.name(),
            tail()
        ));
    }
    let want_env = match k {
        EnforcerKind::Seccomp => "seccomp",
        _ => "bpf",
    };
    if let Some(bad) = lines
        .iter()
        .find(|l| l["sandbox"].is_null() || l["enforcer"].as_str() != Some(want_env))
    {
        return Err(format!(
            "the probe did not run in a {want_env} sandbox (NONO_SANDBOX_ID={}, NONO_ENFORCER={})",
            bad["sandbox"], bad["enforcer"]
        ));
    }
    Ok(format!(
        "NONO_ENFORCER={want_env}{}; the sandbox made all {expected} attempts",
        if via_daemon { " (daemon)" } else { "" }
    ))
}

/// Proof that the mechanism worked outside (see `report::judge_baseline`).
fn proof(o: &Oracle, v: &NetVector, phase: Phase, i: usize, a: &Addressing) -> Seen {
    let port = phase.port(i);
    match v.observe {
        Observe::RoutedTcp | Observe::RoutedUdp => {
            let proto = if v.observe == Observe::RoutedTcp {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            let target = target_of(v, a);
            let n = o.routed_packets_to(proto, target, port);
            Seen {
                count: n,
                what: format!("{n} {proto:?} packets to {target}:{port} carrying a routing option"),
            }
        }
        Observe::WireLoopbackUdp => {
            let n = o.packets_to_addr(Proto::Udp, std::net::Ipv4Addr::LOCALHOST.into(), port);
            Seen {
                count: n,
                what: format!(
                    "{n} UDP packets to 127.0.0.1:{port} on the wire ({} ARP answers for 127.0.0.1)",
                    o.arp_answers()
                ),
            }
        }
        _ => observed(o, v, phase, i),
    }
}

/// What arrived for attempt `i` of `phase`: packets and connections to its
/// port (any address, any options), echo requests with its id, frames
/// with its tag.
fn observed(o: &Oracle, v: &NetVector, phase: Phase, i: usize) -> Seen {
    let port = phase.port(i);
    let (count, what) = match v.observe {
        Observe::Tcp | Observe::RoutedTcp => {
            let p = o.packets_to(Proto::Tcp, port);
            let c = o.accepted(Side::Server, port);
            (
                p + c,
                format!("{p} TCP packets to port {port}, {c} accepted connections"),
            )
        }
        Observe::Udp | Observe::RoutedUdp | Observe::WireLoopbackUdp => {
            let p = o.packets_to(Proto::Udp, port);
            (p, format!("{p} UDP packets to port {port}"))
        }
        Observe::Icmp4Echo | Observe::Icmp6Echo => {
            let v6 = v.observe == Observe::Icmp6Echo;
            let id = phase.id(i);
            let p = o.echo_requests(v6, id);
            (
                p,
                format!(
                    "{p} ICMP{} echo requests with id {id}",
                    if v6 { "v6" } else { "" }
                ),
            )
        }
        Observe::EtherTag => {
            let tag = phase.tag(i);
            let p = o.tagged_frames(&tag);
            (p, format!("{p} 0x88b5 frames tagged {tag}"))
        }
    };
    let _ = Mode::Direct; // every mode is judged by what arrived
    Seen { count, what }
}

/// What a control reached: connections accepted on the client's loopback
/// (loopback4/6) or at the allowed endpoint (proxy).
fn control_seen(o: &Oracle, c: Vector, phase: Phase, i: usize) -> Seen {
    match c {
        Vector::Proxy => {
            let port = 20000 + phase.index() * 100 + 99;
            let n = o.accepted(Side::Server, port);
            Seen {
                count: n,
                what: format!("{n} connections accepted at the allowed endpoint (port {port})"),
            }
        }
        _ => {
            let port = phase.port(i);
            let n = o.accepted(Side::ClientLoopback, port);
            Seen {
                count: n,
                what: format!("{n} connections accepted on loopback port {port}"),
            }
        }
    }
}
