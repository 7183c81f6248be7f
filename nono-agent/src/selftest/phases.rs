//! The phases' processes: start one (in the test host's client
//! namespace), wait for all, stop them on timeout or interruption, and
//! check that a sandboxed one really ran under the enforcer asked for.
//!
//! Children are started from the calling (main) thread: their
//! `PR_SET_PDEATHSIG` fires when the thread that started them ends.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::plan::{net_args, Item, Phase};
use super::probe::PlanItem;
use super::report::EnforcerKind;
use super::run::Options;
use super::testhost::{enter_before_exec, Addressing, TestHost, CAP_NET_RAW};

/// How long one phase may take (a rerouted TCP connect waits 3 s).
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);

/// A started phase: its process's pid and the thread collecting its
/// output.
pub struct Running {
    pub phase: Phase,
    pid: i32,
    done: JoinHandle<std::io::Result<(std::process::ExitStatus, String, String)>>,
}

/// Starts `phase` in the test host's client namespace: the baseline probe
/// itself, or an ordinary `exec` sandbox of the phase's enforcer running
/// the probe, allowed to reach only loopback and the phase's endpoint.
pub fn start_phase(
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

pub fn kill_all(running: &[Running]) {
    for r in running.iter().filter(|r| !r.done.is_finished()) {
        // SAFETY: signals our own child, which has not been waited for
        // (its collector thread is still running).
        unsafe { libc::kill(r.pid, libc::SIGTERM) };
    }
}

pub type PhaseOutput = (std::process::ExitStatus, String, String);

/// How long running phases may still finish on their own after SIGINT /
/// SIGTERM (a phase takes a few seconds; one that ends by itself removes
/// its sandbox normally).
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);

/// Waits for every phase: at most [`PHASE_TIMEOUT`], or [`INTERRUPT_GRACE`]
/// after an interruption; then SIGTERM. Returns the outputs (or why there
/// are none) and whether a phase had to be signalled.
pub fn collect(
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
pub fn sweep_stale() -> Option<String> {
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

pub fn parse_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("vector").is_some())
        .collect()
}

/// Whether the phase's sandbox really ran the probe under enforcer `k`.
pub fn check_sandbox(
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
