//! `hold-nocaps`: a uid-0 process without capabilities, for host-protection
//! tests.

use std::io::{self, Write};
use std::process::exit;
use std::time::Duration;

use serde_json::json;

use crate::args::Args;
use crate::process::write_pidfile;

/// Not a vector: become a uid-0 process without any capability (bounding,
/// ambient, effective, permitted, inheritable), print one JSON line, sleep.
pub(crate) fn hold_nocaps(args: &Args) -> ! {
    // The agent's own privilege code, so the test's "capability-less root"
    // is exactly what the agent makes of a sandboxed root process.
    use nono_agent::sandbox::privileges;
    let mut errors = Vec::new();
    let last_cap = privileges::last_cap().unwrap_or(63);
    if let Err(e) = privileges::drop_bounding_set(last_cap) {
        errors.push(format!("dropping the bounding set: {e}"));
    }
    if let Err(e) = privileges::clear_capability_sets() {
        errors.push(format!("clearing the capability sets: {e}"));
    }
    write_pidfile(args);
    // SAFETY: plain syscalls.
    let (pid, uid) = unsafe { (libc::getpid(), libc::geteuid()) };
    println!(
        "{}",
        json!({"vector": "hold-nocaps", "ok": errors.is_empty(), "errno": null,
               "detail": errors.join("; "), "pid": pid, "uid": uid})
    );
    let _ = io::stdout().flush();
    std::thread::sleep(Duration::from_secs(args.num::<u64>("sleep", Some(30))));
    exit(0);
}
