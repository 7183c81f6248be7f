//! Removing sandboxes whose agent died (SIGKILL, OOM, power loss of the
//! process): kill their processes first, then remove the cgroup, and only
//! then the pinned links, so a sandbox is never unconfined while anything in
//! it still runs.

use anyhow::{Context as _, Result};
use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use super::cgroup::{self, Cgroup};
use super::registry;
use crate::bpf::bpffs;
use crate::util::chain;

/// What a sweep removed.
#[derive(Debug, Default)]
pub struct Swept {
    /// Ids of sandboxes removed.
    pub removed: Vec<String>,
    /// Sandboxes whose processes and cgroup are gone but a socket of which
    /// still exists out of reach (another network namespace, a descriptor
    /// held by another process): their programs stay pinned, and judge that
    /// socket, until it closes; a later sweep removes them.
    pub pending: Vec<String>,
    /// Problems met (the sweep goes on past them).
    pub errors: Vec<String>,
}

/// Removes every sandbox whose owner lock is free. `wait` bounds how long
/// to wait, per sandbox, for the kernel to release the programs of a
/// sandbox whose sockets were destroyed (zero at an `exec`'s start, which
/// must not stall on a sandbox left pending by an earlier run).
pub fn sweep(wait: Duration) -> Result<Swept> {
    let mut out = Swept::default();
    let state = registry::state_dir()?;
    let mut ids = std::collections::BTreeSet::new();

    let cg_parent = cgroup::discover_root()?.join(cgroup::PARENT);
    collect_ids(&cg_parent, &mut ids)?;
    let pin_parents: Vec<_> = bpffs::mounts()?
        .into_iter()
        .map(|m| m.join(bpffs::PARENT))
        .collect();
    for p in &pin_parents {
        collect_ids(p, &mut ids)?;
    }
    collect_lock_ids(&state, &mut ids)?;

    for id in ids {
        let Some(lock) = registry::try_claim_stale(&state, &id)? else {
            continue;
        };
        let cg = Cgroup::existing(cg_parent.join(&id));
        if let Err(e) = cg.destroy(Duration::from_secs(10), || cgroup::Sockets::Destroy) {
            // Pins stay: the sandbox may still have processes.
            out.errors.push(format!("sandbox {id}: {}", chain(&e)));
            continue;
        }
        let mut ok = true;
        for p in &pin_parents {
            let dir = p.join(&id);
            match bpffs::wait_released(&dir, wait) {
                Ok(true) => {}
                Ok(false) => {
                    out.pending.push(id.clone());
                    ok = false;
                    continue;
                }
                Err(e) => {
                    out.errors.push(format!("sandbox {id}: {}", chain(&e)));
                    ok = false;
                    continue;
                }
            }
            if let Err(e) = bpffs::remove_pins(&dir) {
                out.errors.push(format!("sandbox {id}: {}", chain(&e)));
                ok = false;
            }
        }
        if ok {
            lock.release();
            out.removed.push(id);
        }
    }
    Ok(out)
}

fn collect_ids(dir: &Path, ids: &mut std::collections::BTreeSet<String>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in entries.flatten() {
        if let Some(name) = e.file_name().to_str() {
            if registry::is_id(name) {
                ids.insert(name.to_string());
            }
        }
    }
    Ok(())
}

fn collect_lock_ids(dir: &Path, ids: &mut std::collections::BTreeSet<String>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for e in entries.flatten() {
        if let Some(id) = e.file_name().to_str().and_then(|n| n.strip_suffix(".lock")) {
            if registry::is_id(id) {
                ids.insert(id.to_string());
            }
        }
    }
    Ok(())
}
