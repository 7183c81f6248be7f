//! The BPF filesystem where sandbox links are pinned.
//!
//! A `bpf_link` detaches when its last reference goes. Pinning each link
//! keeps a reference that survives the agent, so a SIGKILLed agent leaves its
//! sandbox confined (never unconfined) until `cleanup` or the next run kills
//! the sandbox and then removes the pins, in that order.

use anyhow::{anyhow, Context as _, Result};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::mountinfo;

/// Where a bpffs is mounted when the host has none.
const DEFAULT_MOUNT: &str = "/sys/fs/bpf";
/// Directory below the bpffs root holding one directory per sandbox.
pub const PARENT: &str = "nono";

/// Every bpffs mount point on the host (all are hidden from sandboxes).
pub fn mounts() -> Result<Vec<PathBuf>> {
    let text = mountinfo::read().context("reading /proc/self/mountinfo")?;
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
    fs::create_dir_all(target).with_context(|| format!("creating {DEFAULT_MOUNT}"))?;
    nix::mount::mount(
        Some("bpf"),
        target,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting a bpf filesystem at {DEFAULT_MOUNT} (none was mounted)"))?;
    mountinfo::invalidate();
    mounts()?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("mounted bpffs at {DEFAULT_MOUNT} but it is not in mountinfo"))
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
        Err(e) => Err(e).with_context(|| format!("removing pins in {}", dir.display())),
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
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let path = e.path();
        let fd = super::rawlink::obj_get(&path)
            .with_context(|| format!("opening the pin {}", path.display()))?;
        let target = super::rawlink::cgroup_link_target(std::os::fd::AsFd::as_fd(&fd))
            .with_context(|| format!("reading the link pinned at {}", path.display()))?;
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
