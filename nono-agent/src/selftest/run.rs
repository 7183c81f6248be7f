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

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde_json::Value;

use super::oracle::Oracle;
use super::phases::{check_sandbox, collect, kill_all, parse_lines, start_phase, sweep_stale};
use super::plan::{items, Item, Phase};
use super::report::{
    judge_baseline, judge_control, judge_inside, outcome, Baseline, Cell, EnforcerKind,
    EnforcerReport, EnforcerStatus, HostInfo, ProbeSaid, Report, Row, RowKind, Verdict,
};
use super::seen::{control_seen, listen_all, observed, proof};
use super::testhost::{enter_own_userns, Addressing, TestHost};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The enforcers to test (empty: every one this host offers).
    pub enforcers: Vec<EnforcerKind>,
    pub daemon_socket: PathBuf,
    /// This binary (re-executed as the probe and as `exec`).
    pub exe: PathBuf,
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
            Item::Control(c) => {
                // The same connection outside a sandbox (it must work there
                // too, or the run itself is broken).
                let seen = control_seen(&oracle, *c, Phase::Outside, i);
                let b = if seen.count > 0 {
                    Baseline::Reached
                } else {
                    Baseline::Unreachable
                };
                (RowKind::Control, b, format!("outside: {}", seen.what))
            }
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
