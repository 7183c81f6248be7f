//! `nono-agent selftest` and the hidden `nono-agent __probe` it runs inside
//! each sandbox (see `crate::selftest`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context as _, Result};

use crate::cli::SelftestArgs;
use crate::selftest::probe::{run_batch, PlanItem};
use crate::selftest::run::{run as run_selftest, Options};

/// Exit code when SIGINT/SIGTERM ended the run (everything it made is
/// removed first).
const EXIT_INTERRUPTED: i32 = 130;

pub fn run(args: SelftestArgs) -> Result<i32> {
    let exe = std::env::current_exe().context("locating this binary (re-run as the probe)")?;
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())
            .context("installing the SIGINT/SIGTERM handler")?;
    }
    let mut report = run_selftest(
        &Options {
            enforcers: args.enforcer,
            daemon_socket: args.daemon_socket,
            exe,
        },
        &interrupted,
    );
    let interrupted = interrupted.load(std::sync::atomic::Ordering::Relaxed);
    if interrupted {
        report.exit_code = EXIT_INTERRUPTED;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(report.exit_code)
}

/// `__probe --plan JSON`: performs the attempts, one JSON line each.
pub fn probe(plan: &str) -> Result<i32> {
    let items: Vec<PlanItem> = serde_json::from_str(plan).context("--plan: bad JSON")?;
    let mut out = String::new();
    for line in run_batch(&items) {
        out.push_str(&line.to_string());
        out.push('\n');
    }
    print!("{out}");
    Ok(0)
}
