//! `nono-agent why`, `exec --dry-run`, denial notices and the filesystem
//! line of the summary.
//!
//! - `agree`: `why` and the enforcers give the same verdict on a table of
//!   destinations actually tried in a sandbox against the test host (each
//!   shown reachable outside first; the receiving side is the oracle), and
//!   on paths actually written and read in a sandbox under a profile.
//! - `notices`: on a terminal, one escaped notice per new denied
//!   destination, bounded; none without a terminal, none with `-q`.
//! - `dry_run`: the plan is printed and nothing is created (no child, no
//!   cgroup, no BPF, no events file: checked with strace and markers).
//! - `fsdenials`: filesystem denials listed from Landlock's audit records
//!   (audit turned on for the test), hostile file names escaped.
//!
//! Needs root and a real kernel: `cargo test -p nono-tests --test why`.

mod agree;
mod dry_run;
mod fsdenials;
mod notices;

use std::path::Path;
use std::process::Command;

use nono_tests::per_enforcement;
use nono_tests::runner::Enforcement;
use nono_tests::sys::{self, CmdOutput};

const PROBE: &str = env!("CARGO_BIN_EXE_nono-probe");

/// `nono-agent why ARGS...` (never uses a daemon; no traffic).
fn why(args: &[&str]) -> CmdOutput {
    let mut c = Command::new(sys::agent_bin());
    c.arg("why").args(args);
    sys::run_timeout(&mut c, sys::CMD_TIMEOUT)
}

/// Writes a profile file only root can change (profiles others could write
/// are refused).
fn write_profile(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write profile");
}

per_enforcement!(
    bpf,
    super::Enforcement::Bpf,
    [agree_on_destinations, agree_on_paths, notices_on_a_terminal]
);
per_enforcement!(
    seccomp,
    super::Enforcement::Seccomp,
    [agree_on_destinations, agree_on_paths, notices_on_a_terminal]
);

use agree::{agree_on_destinations, agree_on_paths};
use notices::notices_on_a_terminal;
