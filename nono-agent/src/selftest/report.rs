//! What selftest found, and how it is judged: pure data and decisions (no
//! system calls), so every rule here is unit-tested.
//!
//! The receiving side decides: a vector *leaked* under an enforcer when the
//! oracle saw its traffic arrive, whatever the probe reported; it was
//! *blocked* when nothing arrived although the same attempt outside any
//! sandbox did arrive (the baseline). A vector whose baseline did not
//! arrive cannot be judged on this host (*untestable*). The controls are
//! the opposite check: loopback and the allowed endpoint must be *reached*
//! from inside, or the sandbox is broken (or the run proves nothing).

use serde::Serialize;

use super::vectors::{Mode, NetVector};

/// The enforcers selftest knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EnforcerKind {
    /// `exec` through the root daemon (`--daemon-socket`).
    Daemon,
    /// `exec` loading the BPF programs itself (root, `--no-daemon`).
    Bpf,
    /// `exec --enforcer seccomp`.
    Seccomp,
}

impl EnforcerKind {
    pub const ALL: [EnforcerKind; 3] = [
        EnforcerKind::Daemon,
        EnforcerKind::Bpf,
        EnforcerKind::Seccomp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EnforcerKind::Daemon => "daemon",
            EnforcerKind::Bpf => "bpf",
            EnforcerKind::Seccomp => "seccomp",
        }
    }
}

/// Whether an enforcer was tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnforcerStatus {
    /// Every vector was run under it.
    Tested,
    /// Not available here (the detail says why); nothing was run.
    NotTried,
    /// It should have run but the sandbox did not start or was not the
    /// one asked for: nothing it did can be trusted.
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnforcerReport {
    pub enforcer: EnforcerKind,
    pub status: EnforcerStatus,
    pub detail: String,
}

/// What the run outside any sandbox established for a vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// Its traffic arrived at the test host: a leak would be seen.
    Reached,
    /// The kernel refuses it outside a sandbox too (e.g. a routing header
    /// type it does not support): nothing can leak through it here.
    KernelRefused,
    /// Its traffic did not arrive outside either: cannot be judged here.
    Unreachable,
}

/// One cell of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Escape vector: nothing arrived. Pass.
    Blocked,
    /// Escape vector: its traffic arrived at the test host. Fail.
    Leak,
    /// Control: the allowed destination was reached. Pass.
    Reached,
    /// Control: the allowed destination was not reached (over-blocking, or
    /// the sandbox did not run the probe). Fail.
    NotReached,
    /// No baseline on this host (see [`Baseline`]). Neither.
    Untestable,
    /// The enforcer was not tried or did not run.
    NotRun,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Blocked => "blocked",
            Verdict::Leak => "LEAK",
            Verdict::Reached => "reached",
            Verdict::NotReached => "NOT REACHED",
            Verdict::Untestable => "n/a",
            Verdict::NotRun => "-",
        }
    }
}

/// Escape vectors must be blocked; controls must keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowKind {
    Escape,
    Control,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub enforcer: EnforcerKind,
    pub verdict: Verdict,
    /// What the oracle saw and what the probe reported.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub vector: String,
    pub kind: RowKind,
    pub baseline: Baseline,
    pub baseline_detail: String,
    pub results: Vec<Cell>,
}

/// How the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every tested enforcer blocked every testable vector and kept the
    /// controls working.
    Pass,
    /// Some vector leaked under some enforcer.
    Leak,
    /// No leak, but a control failed or an enforcer that should have run
    /// did not.
    Fail,
    /// selftest itself could not run (no test host, nothing to try, or an
    /// enforcer named with `--enforcer` is not available).
    CannotRun,
}

/// Exit codes (documented in the README).
pub const EXIT_PASS: i32 = 0;
pub const EXIT_LEAK: i32 = 1;
pub const EXIT_FAIL: i32 = 3;
pub const EXIT_CANNOT_RUN: i32 = 125;

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Pass => EXIT_PASS,
            Outcome::Leak => EXIT_LEAK,
            Outcome::Fail => EXIT_FAIL,
            Outcome::CannotRun => EXIT_CANNOT_RUN,
        }
    }
}

/// The test host's addresses, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct HostInfo {
    pub client_v4: String,
    pub server_v4: String,
    pub client_v6: String,
    pub server_v6: String,
    /// The two namespaces (`net:[INODE]`, as /proc/PID/ns/net shows them),
    /// so anyone can check that nothing holds them after the run.
    pub client_netns: String,
    pub server_netns: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: String,
    pub outcome: Outcome,
    pub exit_code: i32,
    pub duration_ms: u64,
    /// Why selftest could not run, when it could not.
    pub error: Option<String>,
    pub test_host: Option<HostInfo>,
    pub enforcers: Vec<EnforcerReport>,
    pub vectors: Vec<Row>,
    pub leaks: usize,
    pub failures: usize,
}

/// What the oracle saw for one attempt: a count and its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub count: usize,
    pub what: String,
}

/// What the probe said about one attempt (informational only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeSaid {
    pub ok: bool,
    pub errno: Option<i32>,
    pub detail: String,
    /// For routing-option vectors: the step that refused the option.
    pub refused_at: Option<String>,
}

impl ProbeSaid {
    fn describe(&self) -> String {
        match self.errno {
            Some(e) => format!(
                "probe: {} ({})",
                self.detail,
                std::io::Error::from_raw_os_error(e)
                    .kind()
                    .to_string()
                    .to_lowercase()
            ),
            None => format!("probe: {}", self.detail),
        }
    }
}

/// Judges the outside run of a vector. `proof` is what shows the
/// mechanism worked (for rerouted vectors: packets that carried the routing
/// option to the target; for others what [`judge_inside`] counts).
pub fn judge_baseline(
    v: &NetVector,
    proof: &Seen,
    probe: Option<&ProbeSaid>,
) -> (Baseline, String) {
    if proof.count > 0 {
        return (Baseline::Reached, format!("outside: {}", proof.what));
    }
    let said = probe.map_or("probe: no result".to_string(), ProbeSaid::describe);
    if let (Mode::ReroutedMayBeRefused, Some(p)) = (v.mode, probe) {
        if !p.ok && p.errno.is_some() && p.refused_at.is_some() {
            return (
                Baseline::KernelRefused,
                format!("the kernel refuses it outside a sandbox too; {said}"),
            );
        }
    }
    (
        Baseline::Unreachable,
        format!(
            "did not arrive outside a sandbox either ({}); {said}",
            proof.what
        ),
    )
}

/// Judges an escape vector inside a sandbox: only the receiving side counts.
pub fn judge_inside(
    baseline: Baseline,
    seen: &Seen,
    probe: Option<&ProbeSaid>,
) -> (Verdict, String) {
    let said = probe.map_or("probe: no result".to_string(), ProbeSaid::describe);
    if seen.count > 0 {
        // Whatever the baseline: traffic arrived from inside.
        return (
            Verdict::Leak,
            format!("the test host received: {}; {said}", seen.what),
        );
    }
    match baseline {
        Baseline::Reached | Baseline::KernelRefused => {
            (Verdict::Blocked, format!("nothing arrived; {said}"))
        }
        Baseline::Unreachable => (Verdict::Untestable, format!("nothing arrived; {said}")),
    }
}

/// Judges a control (loopback, the allowed endpoint) inside a sandbox.
pub fn judge_control(seen: &Seen, probe: Option<&ProbeSaid>) -> (Verdict, String) {
    let said = probe.map_or("probe: no result".to_string(), ProbeSaid::describe);
    if seen.count > 0 {
        (Verdict::Reached, format!("{}; {said}", seen.what))
    } else {
        (Verdict::NotReached, format!("{}; {said}", seen.what))
    }
}

/// The outcome of a run, from its rows and enforcers. `requested`: the
/// enforcers named with `--enforcer` (empty: every one available).
pub fn outcome(
    rows: &[Row],
    enforcers: &[EnforcerReport],
    requested: &[EnforcerKind],
) -> (Outcome, usize, usize) {
    let cells = || rows.iter().flat_map(|r| r.results.iter());
    let leaks = cells().filter(|c| c.verdict == Verdict::Leak).count();
    let failures = cells().filter(|c| c.verdict == Verdict::NotReached).count()
        + enforcers
            .iter()
            .filter(|e| e.status == EnforcerStatus::Error)
            .count();
    let tested = enforcers
        .iter()
        .filter(|e| e.status == EnforcerStatus::Tested)
        .count();
    let missing_requested = requested.iter().any(|k| {
        enforcers
            .iter()
            .any(|e| e.enforcer == *k && e.status == EnforcerStatus::NotTried)
    });
    let o = if leaks > 0 {
        Outcome::Leak
    } else if failures > 0 {
        Outcome::Fail
    } else if tested == 0 || missing_requested {
        Outcome::CannotRun
    } else {
        Outcome::Pass
    };
    (o, leaks, failures)
}

impl Report {
    /// The human table: one line per vector, one column per enforcer, then
    /// the enforcers' status and the verdict.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let kinds: Vec<EnforcerKind> = self.enforcers.iter().map(|e| e.enforcer).collect();
        if let Some(h) = &self.test_host {
            out.push_str(&format!(
                "test host: {} / {} (client {} / {}), private network namespaces\n\n",
                h.server_v4, h.server_v6, h.client_v4, h.client_v6
            ));
        }
        if !self.vectors.is_empty() {
            let w = self
                .vectors
                .iter()
                .map(|r| r.vector.len())
                .max()
                .unwrap_or(6)
                .max(6);
            out.push_str(&format!("{:<w$}  {:<15}", "vector", "outside"));
            for k in &kinds {
                out.push_str(&format!("  {:<11}", k.name()));
            }
            out.push('\n');
            for r in &self.vectors {
                let base = match (r.kind, r.baseline) {
                    (RowKind::Control, _) => "(must work)",
                    (_, Baseline::Reached) => "reached",
                    (_, Baseline::KernelRefused) => "kernel refuses",
                    (_, Baseline::Unreachable) => "unreachable",
                };
                out.push_str(&format!("{:<w$}  {:<15}", r.vector, base));
                for k in &kinds {
                    let v = r
                        .results
                        .iter()
                        .find(|c| c.enforcer == *k)
                        .map_or(Verdict::NotRun, |c| c.verdict);
                    out.push_str(&format!("  {:<11}", v.label()));
                }
                out.push('\n');
            }
            out.push('\n');
        }
        for e in &self.enforcers {
            let s = match e.status {
                EnforcerStatus::Tested => "tested",
                EnforcerStatus::NotTried => "not tried",
                EnforcerStatus::Error => "ERROR",
            };
            out.push_str(&format!("{:<8} {s}: {}\n", e.enforcer.name(), e.detail));
        }
        for r in &self.vectors {
            for c in &r.results {
                if matches!(c.verdict, Verdict::Leak | Verdict::NotReached) {
                    out.push_str(&format!(
                        "{} {} under {}: {}\n",
                        c.verdict.label(),
                        r.vector,
                        c.enforcer.name(),
                        c.detail
                    ));
                }
            }
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("selftest could not run: {e}\n"));
        }
        let verdict = match self.outcome {
            Outcome::Pass => "PASS: every tested enforcer blocked every vector".to_string(),
            Outcome::Leak => format!("FAIL: {} leak(s)", self.leaks),
            Outcome::Fail => format!("FAIL: {} check(s) did not work", self.failures),
            Outcome::CannotRun => "selftest could not test what was asked".to_string(),
        };
        out.push_str(&format!(
            "{verdict} ({:.1} s, exit {})\n",
            self.duration_ms as f64 / 1000.0,
            self.exit_code
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selftest::vectors::find_network;

    fn seen(n: usize) -> Seen {
        Seen {
            count: n,
            what: format!("{n} packets"),
        }
    }

    #[test]
    fn the_receiving_side_decides_not_the_probe() {
        // The probe claims failure, but traffic arrived: a leak.
        let lying = ProbeSaid {
            ok: false,
            errno: Some(libc::EPERM),
            detail: "connect: EPERM".into(),
            refused_at: None,
        };
        assert_eq!(
            judge_inside(Baseline::Reached, &seen(1), Some(&lying)).0,
            Verdict::Leak
        );
        // The probe claims success, nothing arrived: blocked.
        let boasting = ProbeSaid {
            ok: true,
            ..ProbeSaid::default()
        };
        assert_eq!(
            judge_inside(Baseline::Reached, &seen(0), Some(&boasting)).0,
            Verdict::Blocked
        );
        // No baseline: cannot be judged, unless something arrived.
        assert_eq!(
            judge_inside(Baseline::Unreachable, &seen(0), None).0,
            Verdict::Untestable
        );
        assert_eq!(
            judge_inside(Baseline::Unreachable, &seen(2), None).0,
            Verdict::Leak
        );
    }

    #[test]
    fn baseline_refusal_only_for_vectors_that_may_be_refused() {
        let refused = ProbeSaid {
            ok: false,
            errno: Some(libc::EINVAL),
            detail: "setsockopt".into(),
            refused_at: Some("setsockopt".into()),
        };
        let rh2 = find_network("rh2-udp-sockopt").expect("vector");
        assert_eq!(
            judge_baseline(&rh2, &seen(0), Some(&refused)).0,
            Baseline::KernelRefused
        );
        let tcp = find_network("tcp4").expect("vector");
        assert_eq!(
            judge_baseline(&tcp, &seen(0), Some(&refused)).0,
            Baseline::Unreachable
        );
        assert_eq!(judge_baseline(&tcp, &seen(3), None).0, Baseline::Reached);
    }

    fn row(kind: RowKind, v: Verdict) -> Row {
        Row {
            vector: "x".into(),
            kind,
            baseline: Baseline::Reached,
            baseline_detail: String::new(),
            results: vec![Cell {
                enforcer: EnforcerKind::Bpf,
                verdict: v,
                detail: String::new(),
            }],
        }
    }

    fn enf(k: EnforcerKind, s: EnforcerStatus) -> EnforcerReport {
        EnforcerReport {
            enforcer: k,
            status: s,
            detail: String::new(),
        }
    }

    #[test]
    fn outcome_and_exit_codes() {
        use EnforcerKind::*;
        use EnforcerStatus::*;
        let tested = [enf(Bpf, Tested), enf(Daemon, NotTried)];
        let ok = [
            row(RowKind::Escape, Verdict::Blocked),
            row(RowKind::Control, Verdict::Reached),
        ];
        assert_eq!(outcome(&ok, &tested, &[]).0, Outcome::Pass);
        // Asked for the daemon, which was not tried: cannot run.
        assert_eq!(outcome(&ok, &tested, &[Daemon]).0, Outcome::CannotRun);
        let leak = [
            row(RowKind::Escape, Verdict::Leak),
            row(RowKind::Control, Verdict::NotReached),
        ];
        assert_eq!(outcome(&leak, &tested, &[Daemon]).0, Outcome::Leak);
        let broken = [row(RowKind::Control, Verdict::NotReached)];
        assert_eq!(outcome(&broken, &tested, &[]).0, Outcome::Fail);
        assert_eq!(outcome(&ok, &[enf(Bpf, Error)], &[]).0, Outcome::Fail);
        assert_eq!(
            outcome(&[], &[enf(Seccomp, NotTried)], &[]).0,
            Outcome::CannotRun
        );
        let codes: Vec<i32> = [
            Outcome::Pass,
            Outcome::Leak,
            Outcome::Fail,
            Outcome::CannotRun,
        ]
        .iter()
        .map(|o| o.exit_code())
        .collect();
        assert_eq!(codes, vec![0, 1, 3, 125]);
    }
}
