//! The sandbox's cgroup v2 directory: create, kill everything in it, remove.

use anyhow::{anyhow, bail, Context as _, Result};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{netns, sockdiag};
use crate::mountinfo;

/// Name of the directory below the cgroup2 root that holds every sandbox.
pub const PARENT: &str = "nono";

/// The cgroup2 mount point, discovered from mountinfo.
pub fn discover_root() -> Result<PathBuf> {
    let text = mountinfo::read().context("reading /proc/self/mountinfo")?;
    let mounts = mountinfo::find(&text, "cgroup2");
    // Prefer a mount of the real hierarchy root; a mount whose root is not
    // "/" is a view from inside a cgroup namespace or a bind mount.
    mounts
        .iter()
        .find(|m| m.root == "/")
        .or_else(|| mounts.first())
        .map(|m| m.mount_point.clone())
        .ok_or_else(|| anyhow!("no cgroup2 filesystem is mounted (checked /proc/self/mountinfo); cgroup v2 is required"))
}

/// `<cgroup2>/nono`, created if missing.
pub fn parent_dir(root: &Path) -> Result<PathBuf> {
    let p = root.join(PARENT);
    crate::util::ensure_dir(&p, None)?;
    Ok(p)
}

/// One sandbox's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<parent>/<id>`; fails if it exists (ids are never reused).
    pub fn create(parent: &Path, id: &str) -> Result<Self> {
        let path = parent.join(id);
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    /// An existing cgroup (for cleanup of a dead agent's sandbox).
    pub fn existing(path: PathBuf) -> Self {
        Self { path }
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Kills every process in the cgroup and its descendants and waits until
    /// it is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        kill_and_wait(&self.path, timeout)
    }

    /// Kills everything and removes the cgroup, descendants first; if
    /// `sockets()`, asked once the processes are gone (so none can make a
    /// socket after the answer), says [`Sockets::Destroy`], also destroys
    /// every TCP/UDP socket the sandbox's processes created (orphans with
    /// queued data, listeners, sockets passed to other processes) in
    /// between.
    ///
    /// The caller unpins the BPF programs only after this succeeded: a
    /// socket that outlived them would send unjudged. The socket step comes
    /// after the kill (nothing can create new ones) and before the removal
    /// (the cgroup ids are read from the directories). Returns what
    /// `sockets()` chose; after [`Sockets::Destroy`] the caller still checks
    /// [`crate::bpf::bpffs::released`] before unpinning, for sockets no
    /// sweep could reach.
    pub fn destroy(&self, timeout: Duration, sockets: impl FnOnce() -> Sockets) -> Result<Sockets> {
        if !self.path.exists() {
            return Ok(Sockets::Keep);
        }
        // Opened before the kill, while members still hold them: the
        // sockets of a namespace other than ours are only visible from it.
        let namespaces = netns::of_cgroup_tree(&self.path);
        self.kill_all(timeout)?;
        let chosen = sockets();
        if chosen == Sockets::Destroy {
            let ids = sockdiag::cgroup_tree_ids(&self.path)
                .with_context(|| format!("reading the cgroup ids below {}", self.path.display()))?;
            let what = || {
                format!(
                    "destroying the sockets of {} (the programs stay attached)",
                    self.path.display()
                )
            };
            sockdiag::destroy_cgroup_sockets(&ids).with_context(what)?;
            for ns in &namespaces {
                let there = || format!("{} in network namespace {}", what(), ns.ino());
                ns.run(|| sockdiag::destroy_cgroup_sockets(&ids))
                    .with_context(there)?
                    .with_context(there)?;
            }
        }
        remove_tree(&self.path)?;
        Ok(chosen)
    }
}

/// Whether [`Cgroup::destroy`] looks for the sandbox's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sockets {
    /// Destroy them (BPF programs are about to be unpinned).
    Destroy,
    /// Leave them: nothing unfiltered follows (no programs to remove, or
    /// the sandbox created no inet socket).
    Keep,
}

fn kill_and_wait(path: &Path, timeout: Duration) -> Result<()> {
    let kill = path.join("cgroup.kill");
    match fs::write(&kill, b"1") {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound && !path.exists() => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("writing {}", kill.display())),
    }
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        if !populated(path)? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "processes in {} did not exit within {:?} after cgroup.kill",
                path.display(),
                timeout
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Whether any process is left in the cgroup or below it.
pub fn populated(path: &Path) -> Result<bool> {
    let events = path.join("cgroup.events");
    let text = match fs::read_to_string(&events) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", events.display())),
    };
    Ok(text.lines().any(|l| l.trim() == "populated 1"))
}

fn remove_tree(path: &Path) -> Result<()> {
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", path.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", path.display()))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing cgroup {}", path.display())),
    }
}
