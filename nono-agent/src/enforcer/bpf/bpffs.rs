//! The BPF filesystem where sandbox links are pinned.
//!
//! A `bpf_link` detaches when its last reference goes. Pinning each link
//! keeps a reference that survives the agent, so a SIGKILLed agent leaves its
//! sandbox confined (never unconfined) until `cleanup` or the next run kills
//! the sandbox and then removes the pins, in that order.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::rawlink;
use crate::mountinfo;
use crate::util::UtilError;

/// Errors of finding, mounting and reading the bpffs and its pins.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// The mount table could not be read.
    #[error("reading /proc/self/mountinfo")]
    Mountinfo(#[source] std::io::Error),
    /// No bpffs was mounted and its mount point could not be created.
    #[error("creating {}", .path.display())]
    CreateMountPoint {
        /// The mount point.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No bpffs was mounted and mounting one failed.
    #[error("mounting a bpf filesystem at {} (none was mounted)", .path.display())]
    Mount {
        /// The mount point.
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// The bpffs just mounted does not show in the mount table.
    #[error("mounted bpffs at {} but it is not in mountinfo", .path.display())]
    NotInMountinfo {
        /// The mount point.
        path: PathBuf,
    },
    /// `<bpffs>/nono` could not be created.
    #[error(transparent)]
    ParentDir(#[from] UtilError),
    /// A sandbox's pin directory could not be removed.
    #[error("removing pins in {}", .path.display())]
    RemovePins {
        /// The pin directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A sandbox's pin directory could not be listed.
    #[error("listing {}", .path.display())]
    List {
        /// The pin directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pinned link could not be opened.
    #[error("opening the pin {}", .path.display())]
    OpenPin {
        /// The pin.
        path: PathBuf,
        #[source]
        source: rawlink::Error,
    },
    /// A pinned link's target could not be read.
    #[error("reading the link pinned at {}", .path.display())]
    ReadLink {
        /// The pin.
        path: PathBuf,
        #[source]
        source: rawlink::Error,
    },
}

type Result<T, E = BpffsError> = std::result::Result<T, E>;

/// Where a bpffs is mounted when the host has none.
const DEFAULT_MOUNT: &str = "/sys/fs/bpf";
/// Directory below the bpffs root holding one directory per sandbox.
pub const PARENT: &str = "nono";

/// Every bpffs mount point on the host (all are hidden from sandboxes).
pub fn mounts() -> Result<Vec<PathBuf>> {
    let text = mountinfo::read().map_err(BpffsError::Mountinfo)?;
    Ok(mountinfo::find(&text, "bpf")
        .into_iter()
        .map(|m| m.mount_point)
        .collect())
}

/// The bpffs to pin into, mounting one at /sys/fs/bpf if none exists.
pub fn ensure_mounted() -> Result<PathBuf> {
    if let Some(m) = mounts()?.into_iter().next() {
        return Ok(m);
    }
    let target = Path::new(DEFAULT_MOUNT);
    fs::create_dir_all(target).map_err(|source| BpffsError::CreateMountPoint {
        path: target.to_path_buf(),
        source,
    })?;
    nix::mount::mount(
        Some("bpf"),
        target,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|source| BpffsError::Mount {
        path: target.to_path_buf(),
        source,
    })?;
    mountinfo::invalidate();
    mounts()?
        .into_iter()
        .next()
        .ok_or_else(|| BpffsError::NotInMountinfo {
            path: target.to_path_buf(),
        })
}

/// `<bpffs>/nono`, created 0700 if missing.
pub fn parent_dir(bpffs: &Path) -> Result<PathBuf> {
    let p = bpffs.join(PARENT);
    crate::util::ensure_dir(&p, Some(0o700))?;
    Ok(p)
}

/// Removes a sandbox's pin directory and every pin in it. Only call once the
/// sandbox's processes are dead: removing the pins detaches the programs.
pub fn remove_pins(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpffsError::RemovePins {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Whether every link pinned in `dir` is defunct: the kernel released the
/// programs of the (removed) cgroup they were attached to, which it does
/// only once no socket refers to that cgroup any more (each socket holds a
/// reference on its cgroup's programs). Until then a socket of the sandbox
/// still exists somewhere (another network namespace, a file descriptor
/// passed out) and its packets are still judged by these programs; removing
/// the pins would let it send unjudged. A missing directory counts as
/// released.
pub fn released(dir: &Path) -> Result<bool> {
    let list = |source| BpffsError::List {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(list(e)),
    };
    for e in entries {
        let path = e.map_err(list)?.path();
        let fd = rawlink::obj_get(&path).map_err(|source| BpffsError::OpenPin {
            path: path.clone(),
            source,
        })?;
        let target = rawlink::cgroup_link_target(std::os::fd::AsFd::as_fd(&fd))
            .map_err(|source| BpffsError::ReadLink { path, source })?;
        if matches!(target, Some(id) if id != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits up to `timeout` for [`released`]: the kernel frees a destroyed
/// socket and then the removed cgroup's programs asynchronously (after an
/// RCU grace period, from a workqueue).
pub fn wait_released(dir: &Path, timeout: std::time::Duration) -> Result<bool> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        if released(dir)? {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Ok(false);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}
