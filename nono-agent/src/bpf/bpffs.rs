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
