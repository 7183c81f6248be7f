//! Phase timings on stderr when `NONO_AGENT_TIMINGS=1`, for measuring where
//! start-up and teardown time goes (see `cargo xtask bench`).

use std::time::{Duration, Instant};

/// Time spent in each named phase since the previous mark.
pub struct Timing {
    enabled: bool,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Timing {
    /// Starts the clock (a no-op unless `NONO_AGENT_TIMINGS=1`).
    pub fn new() -> Self {
        Self {
            enabled: std::env::var_os("NONO_AGENT_TIMINGS").is_some_and(|v| v == "1"),
            last: Instant::now(),
            phases: Vec::new(),
        }
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
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self::new()
    }
}
