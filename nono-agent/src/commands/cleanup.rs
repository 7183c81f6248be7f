//! `nono-agent cleanup`: remove sandboxes whose agent died.

use anyhow::{bail, Result};

use crate::cli::CleanupArgs;
use crate::sandbox::sweep;

pub fn run(args: CleanupArgs) -> Result<i32> {
    if let Some(name) = &args.daemon {
        if crate::daemon::client::Client::connect(&args.daemon_socket)?.is_some() {
            bail!(
                "a daemon answers on {}: stop it before removing its state",
                args.daemon_socket.display()
            );
        }
        let removed = crate::daemon::shared::remove_all(name)?;
        println!(
            "removed the daemon state {name:?} ({removed} sandbox cgroup(s) killed and removed)"
        );
        return Ok(0);
    }
    // Credential sandboxes' CA bundles whose agent is gone (SIGKILL).
    let base = crate::sandbox::cabundle::base_dir();
    for e in crate::sandbox::cabundle::sweep_stale(&base) {
        eprintln!("nono-agent: removing a stale CA bundle: {e}");
    }
    let swept = sweep::sweep(std::time::Duration::from_secs(2))?;
    for id in &swept.removed {
        println!("removed stale sandbox {id}");
    }
    for id in &swept.pending {
        println!(
            "sandbox {id}: processes gone, but a socket it made still exists out of \
             reach (another network namespace or a descriptor held elsewhere); its \
             programs stay attached to judge it until it closes: run cleanup again later"
        );
    }
    for e in &swept.errors {
        eprintln!("nono-agent: {e}");
    }
    if swept.removed.is_empty() && swept.errors.is_empty() && swept.pending.is_empty() {
        println!("no stale sandboxes");
    }
    Ok(if swept.errors.is_empty() { 0 } else { 1 })
}
