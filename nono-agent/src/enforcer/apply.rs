//! Applying the chosen enforcer to a sandbox's resources.

use nono_common::Policy;
use std::path::PathBuf;
use tokio::io::unix::AsyncFd;

use crate::enforcer::bpf::bpffs::{self, BpffsError};
use crate::enforcer::bpf::loader::{self, LoadError};
use crate::sandbox::cgroup::{self, CgroupError};
use crate::sandbox::teardown::Resources;

/// Errors of applying the BPF enforcer.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The sandbox's cgroup could not be created.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// No bpffs could be found or mounted.
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    /// The sandbox's pin directory could not be created.
    #[error("creating {}", .path.display())]
    PinDir {
        /// The pin directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The programs could not be loaded, attached or pinned.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The event ring buffer could not be registered with the runtime.
    #[error("registering the event ring buffer")]
    RegisterRing(#[source] std::io::Error),
}

/// The enforcer in force for this run (one value per run: its size does not
/// matter).
#[allow(clippy::large_enum_variant)]
pub enum Applied {
    Bpf {
        ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
        dropped: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
        cgroup_dir: PathBuf,
        pin_dir: PathBuf,
        /// Where redirected sockets dialled (transparent mode).
        originals: crate::enforcer::bpf::loader::Originals,
    },
    /// The daemon's programs, through a sandbox cgroup it made for us.
    Daemon {
        cgroup_dir: PathBuf,
        nested: bool,
    },
    Seccomp,
    Unenforced,
}

impl Applied {
    /// The name the command sees in `NONO_ENFORCER`.
    pub fn name(&self) -> &'static str {
        match self {
            Applied::Bpf { .. } | Applied::Daemon { .. } => "bpf",
            Applied::Seccomp => "seccomp",
            Applied::Unenforced => "none",
        }
    }
}

/// Creates the cgroup, pins and programs; on failure everything created so
/// far is removed by `res`'s teardown.
pub fn apply_bpf(res: &mut Resources, policy: &Policy) -> Result<Applied, ApplyError> {
    let cg_root = cgroup::discover_root()?;
    let cg_parent = cgroup::parent_dir(&cg_root)?;
    let cg = cgroup::Cgroup::create(&cg_parent, &res.id)?;
    let cg_path = cg.path().to_path_buf();
    let cg_id = cg.id()?;
    res.cgroup = Some(cg);

    let bpffs_root = bpffs::ensure_mounted()?;
    let pin_parent = bpffs::parent_dir(&bpffs_root)?;
    let pin_dir = pin_parent.join(&res.id);
    std::fs::create_dir(&pin_dir).map_err(|source| ApplyError::PinDir {
        path: pin_dir.clone(),
        source,
    })?;
    res.pin_dir = Some(pin_dir.clone());

    let attached = loader::load_and_attach_fast(&cg_path, cg_id, policy, Some(&pin_dir))?;
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
    // until the RingBuf (owned by the AsyncFd) is dropped.
    let ring =
        unsafe { AsyncFd::register_with_interest(attached.events, tokio::io::Interest::READABLE) }
            .map_err(|e| ApplyError::RegisterRing(e.into_parts().1))?;
    res.attached = Some(attached.keep);
    Ok(Applied::Bpf {
        ring,
        originals: attached.originals,
        dropped: attached.dropped,
        cgroup_dir: cg_path,
        pin_dir,
    })
}
