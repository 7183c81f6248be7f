//! The daemon's own log, through `tracing`: to the journal with structured
//! fields (`SANDBOX`, `UID`, `EVENT`, `VERDICT`, `HOOK`, `REASON`, `DEST`),
//! or to stderr as human lines or one JSON object per line.
//!
//! Denials are logged at info, at most [`DENIAL_LOGS_PER_SEC`] a second per
//! sandbox and [`DENIAL_LOGS_PER_SEC_TOTAL`] for the whole daemon; the rest are counted (`nono_denial_logs_suppressed_total`, and
//! `SUPPRESSED=` on the next denial logged for that sandbox).

use std::time::Instant;

/// How the daemon logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Native journal entries with fields (the default under systemd).
    Journald,
    /// One JSON object per line on stderr.
    Json,
    /// Human lines on stderr (the default otherwise).
    Text,
}

/// Denials logged per sandbox per second; the rest are only counted.
pub const DENIAL_LOGS_PER_SEC: u32 = 10;

/// Denials logged per second by the whole daemon (many busy sandboxes must
/// not flood the journal either).
pub const DENIAL_LOGS_PER_SEC_TOTAL: u32 = 200;

/// Whether stderr is the journal stream systemd connected
/// (`JOURNAL_STREAM=<dev>:<ino>` naming stderr itself, as systemd's docs
/// say to check, so a redirected stderr keeps text).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// Installs the global subscriber. `None` picks journald under systemd,
/// text otherwise. Returns the format in use (journald falls back to text,
/// with a warning, when the journal cannot be reached).
pub fn init(format: Option<LogFormat>) -> LogFormat {
    use tracing_subscriber::prelude::*;
    let want = format.unwrap_or(if stderr_is_journal() {
        LogFormat::Journald
    } else {
        LogFormat::Text
    });
    let level = tracing_subscriber::filter::LevelFilter::INFO;
    let (used, fail) = match want {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(l) => {
                // Sandbox events and denials are routine: informational
                // (6), not the crate's default of notice (5) for info.
                let l = l
                    .with_field_prefix(None)
                    .with_syslog_identifier("nono-agent".into())
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        info: tracing_journald::Priority::Informational,
                        debug: tracing_journald::Priority::Debug,
                        ..tracing_journald::PriorityMappings::new()
                    });
                let _ = tracing_subscriber::registry()
                    .with(l.with_filter(level))
                    .try_init();
                (LogFormat::Journald, None)
            }
            Err(e) => (LogFormat::Text, Some(e)),
        },
        other => (other, None),
    };
    match used {
        LogFormat::Json => {
            let _ = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(std::io::stderr)
                .with_max_level(level)
                .try_init();
        }
        LogFormat::Text => {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(false)
                .with_max_level(level)
                .try_init();
        }
        LogFormat::Journald => {}
    }
    if let Some(e) = fail {
        tracing::warn!("the journal cannot be reached ({e}); logging text to stderr");
    }
    used
}

/// Per-sandbox denial log budget (one second windows).
#[derive(Debug, Clone, Copy)]
pub struct DenialBudget {
    window: Instant,
    used: u32,
    /// Denials left out since the last one logged.
    pub suppressed: u64,
}

impl Default for DenialBudget {
    fn default() -> Self {
        Self {
            window: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }
}

impl DenialBudget {
    /// Whether a denial seen `now` may be logged (at most `limit` a
    /// second); if not it is counted.
    pub fn take(&mut self, now: Instant, limit: u32) -> bool {
        if now.duration_since(self.window).as_secs() >= 1 {
            self.window = now;
            self.used = 0;
        }
        if self.used < limit {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn budget_limits_per_second_and_counts() {
        let t0 = Instant::now();
        let mut b = DenialBudget::default();
        let logged = (0..100).filter(|_| b.take(t0, DENIAL_LOGS_PER_SEC)).count();
        assert_eq!(logged as u32, DENIAL_LOGS_PER_SEC);
        assert_eq!(b.suppressed, 100 - u64::from(DENIAL_LOGS_PER_SEC));
        assert!(b.take(t0 + Duration::from_millis(1001), DENIAL_LOGS_PER_SEC));
    }
}
