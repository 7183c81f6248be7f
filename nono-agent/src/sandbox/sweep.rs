//! Removing sandboxes whose agent died (SIGKILL, OOM, power loss of the
//! process): kill their processes first, then remove the cgroup, and only
//! then the pinned links, so a sandbox is never unconfined while anything in
//! it still runs.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cgroup::{self, Cgroup, CgroupError};
use super::registry::{self, RegistryError};
use crate::enforcer::bpf::bpffs::{self, BpffsError};
use crate::util::chain;

/// Errors that stop a sweep before it looked at any sandbox (problems with
/// one sandbox are collected in [`Swept::errors`] instead).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The state directory could not be created, or a lock not examined.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The cgroup2 root could not be found.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The bpffs mounts could not be listed.
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    /// A directory holding sandboxes (cgroups, pins or locks) could not be
    /// listed.
    #[error("listing {}", .path.display())]
    List {
        /// The directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = SweepError> = std::result::Result<T, E>;

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
        Err(source) => {
            return Err(SweepError::List {
                path: dir.to_path_buf(),
                source,
            })
        }
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
    let entries = fs::read_dir(dir).map_err(|source| SweepError::List {
        path: dir.to_path_buf(),
        source,
    })?;
    for e in entries.flatten() {
        if let Some(id) = e.file_name().to_str().and_then(|n| n.strip_suffix(".lock")) {
            if registry::is_id(id) {
                ids.insert(id.to_string());
            }
        }
    }
    Ok(())
}
