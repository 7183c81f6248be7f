//! Phase timings on stderr when `NONO_AGENT_TIMINGS=1`, for measuring where
//! start-up and teardown time goes (see `cargo xtask bench`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// When `main` started (see [`mark_process_start`]).
static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// When the phases were printed (see [`report_exit`]).
static REPORTED: OnceLock<Instant> = OnceLock::new();

/// Called first thing in `main`: the first phase of a [`Timing`] then
/// covers what happens before the command's code runs (argument parsing,
/// the runtime), which is on every start-up's path too.
pub fn mark_process_start() {
    let _ = PROCESS_START.set(Instant::now());
}

/// Time spent in each named phase since the previous mark.
pub struct Timing {
    enabled: bool,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Timing {
    /// Starts the clock (a no-op unless `NONO_AGENT_TIMINGS=1`).
    pub fn new() -> Self {
        let mut t = Self {
            enabled: std::env::var_os("NONO_AGENT_TIMINGS").is_some_and(|v| v == "1"),
            last: PROCESS_START.get().copied().unwrap_or_else(Instant::now),
            phases: Vec::new(),
        };
        if PROCESS_START.get().is_some() {
            t.mark("main");
        }
        t
    }

    /// Ends the phase `phase`.
    pub fn mark(&mut self, phase: &'static str) {
        if self.enabled {
            let now = Instant::now();
            self.phases.push((phase, now - self.last));
            self.last = now;
        }
    }

    /// Prints the phases on one line.
    pub fn report(&self) {
        if self.enabled {
            let parts: Vec<String> = self
                .phases
                .iter()
                .map(|(p, d)| format!("{p}={d:.2?}"))
                .collect();
            eprintln!("nono-agent: timings: {}", parts.join(" "));
            let _ = REPORTED.set(Instant::now());
        }
    }
}

/// Called last in `main`, before the exit: how long the way out took since
/// the phases were printed (dropping the runtime and what the run held).
pub fn report_exit() {
    if let Some(t) = REPORTED.get() {
        eprintln!("nono-agent: timings: exit path={:.2?}", t.elapsed());
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self::new()
    }
}
