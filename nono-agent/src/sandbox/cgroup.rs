//! The sandbox's cgroup v2 directory: create, kill everything in it, remove.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{netns, sockdiag};
use crate::mountinfo;
use crate::util::UtilError;

/// Errors of finding, creating, emptying and removing cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The mount table could not be read.
    #[error("reading /proc/self/mountinfo")]
    Mountinfo(#[source] std::io::Error),
    /// No cgroup2 filesystem is mounted here; the text says why, when it
    /// can tell, and what to do ([`explain_no_cgroup2`]).
    #[error("{0}")]
    NoCgroup2(String),
    /// `<cgroup2>/nono` could not be created.
    #[error(transparent)]
    ParentDir(#[from] UtilError),
    /// A sandbox's cgroup could not be created (or already exists).
    #[error("creating cgroup {}", .path.display())]
    Create {
        /// The cgroup directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A cgroup directory could not be examined.
    #[error("examining cgroup {}", .path.display())]
    Stat {
        /// The cgroup directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `cgroup.kill` could not be written.
    #[error("writing {}", .path.display())]
    Kill {
        /// The `cgroup.kill` file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Processes were left after `cgroup.kill` and the timeout.
    #[error("processes in {} did not exit within {timeout:?} after cgroup.kill", .path.display())]
    KillTimeout {
        /// The cgroup directory.
        path: PathBuf,
        /// How long was waited.
        timeout: Duration,
    },
    /// `cgroup.events` could not be read.
    #[error("reading {}", .path.display())]
    Events {
        /// The `cgroup.events` file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The ids of the cgroup tree (to find its sockets) could not be read.
    #[error("reading the cgroup ids below {}", .path.display())]
    TreeIds {
        /// The cgroup directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The sandbox's sockets in the agent's network namespace could not all
    /// be destroyed.
    #[error("destroying the sockets of {} (the programs stay attached)", .path.display())]
    DestroySockets {
        /// The cgroup directory.
        path: PathBuf,
        #[source]
        source: sockdiag::Error,
    },
    /// A network namespace the sandbox's processes were in could not be
    /// entered to destroy their sockets there.
    #[error("destroying the sockets of {} (the programs stay attached) in network namespace {ino}", .path.display())]
    EnterNetns {
        /// The cgroup directory.
        path: PathBuf,
        /// The namespace's inode.
        ino: u64,
        #[source]
        source: netns::Error,
    },
    /// The sandbox's sockets in another network namespace could not all be
    /// destroyed.
    #[error("destroying the sockets of {} (the programs stay attached) in network namespace {ino}", .path.display())]
    DestroySocketsIn {
        /// The cgroup directory.
        path: PathBuf,
        /// The namespace's inode.
        ino: u64,
        #[source]
        source: sockdiag::Error,
    },
    /// A cgroup directory could not be listed.
    #[error("listing {}", .path.display())]
    List {
        /// The cgroup directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A cgroup directory could not be removed.
    #[error("removing cgroup {}", .path.display())]
    Remove {
        /// The cgroup directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = CgroupError> = std::result::Result<T, E>;

/// Name of the directory below the cgroup2 root that holds every sandbox.
pub const PARENT: &str = "nono";

/// The cgroup2 mount point, discovered from mountinfo.
pub fn discover_root() -> Result<PathBuf> {
    let text = mountinfo::read().map_err(CgroupError::Mountinfo)?;
    let mounts = mountinfo::find(&text, "cgroup2");
    // Prefer a mount of the real hierarchy root; a mount whose root is not
    // "/" is a view from inside a cgroup namespace or a bind mount.
    mounts
        .iter()
        .find(|m| m.root == "/")
        .or_else(|| mounts.first())
        .map(|m| m.mount_point.clone())
        .ok_or_else(|| CgroupError::NoCgroup2(explain_no_cgroup2(&host_view())))
}

/// What can explain a missing cgroup2 mount.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostView {
    /// pid 1's cgroup2 mount point (readable as root): the host has one,
    /// this mount namespace does not show it.
    pub init_cgroup2: Option<PathBuf>,
    /// The network namespace named by the source of the sysfs on /sys, if
    /// `/run/netns/<source>` exists: `ip netns exec NAME` mounts a sysfs
    /// named NAME there (without the cgroup mounts below it).
    pub ip_netns: Option<String>,
}

fn host_view() -> HostView {
    let first_cgroup2 = |t: &str| {
        let m = mountinfo::find(t, "cgroup2");
        m.iter()
            .find(|m| m.root == "/")
            .or(m.first())
            .map(|m| m.mount_point.clone())
    };
    let init_cgroup2 = fs::read_to_string("/proc/1/mountinfo")
        .ok()
        .and_then(|t| first_cgroup2(&t));
    let ip_netns = mountinfo::read().ok().and_then(|t| sysfs_netns(&t));
    HostView {
        init_cgroup2,
        ip_netns,
    }
}

/// The source of the sysfs mounted on /sys when it names a network
/// namespace in /run/netns (what `ip netns exec` does).
fn sysfs_netns(mountinfo_text: &str) -> Option<String> {
    mountinfo_text.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split(' ');
        let (ty, source) = (r.next()?, r.next()?);
        let mount_point = left.split(' ').nth(4)?;
        let named = ty == "sysfs"
            && mount_point == "/sys"
            && source != "sysfs"
            && !source.contains('/')
            && Path::new("/run/netns").join(source).exists();
        named.then(|| source.to_string())
    })
}

/// Why no cgroup2 filesystem is visible, and what to do (pure). The usual
/// cause on a host that has one: `ip netns exec` makes a mount namespace
/// and mounts a fresh sysfs on /sys, without the cgroup mounts below it.
pub fn explain_no_cgroup2(v: &HostView) -> String {
    let host = match &v.init_cgroup2 {
        Some(p) => format!(" (the host has it at {})", p.display()),
        None => String::new(),
    };
    // A fresh sysfs has the empty /sys/fs/cgroup to mount on.
    let mount = "/sys/fs/cgroup";
    match (&v.ip_netns, &v.init_cgroup2) {
        (Some(ns), _) => format!(
            "no cgroup2 filesystem is mounted here{host}: `ip netns exec {ns}` mounted a new /sys \
             without it, and root sandboxes need cgroup v2. Enter the namespace with \
             `nsenter --net=/run/netns/{ns} nono-agent ...` instead, or mount it here \
             (mount -t cgroup2 none {mount})"
        ),
        (None, Some(_)) => format!(
            "no cgroup2 filesystem is mounted in this mount namespace{host}: something mounted a \
             new /sys over it (`ip netns exec` does), and root sandboxes need cgroup v2. Enter a \
             network namespace with `nsenter --net=/run/netns/NAME` instead of `ip netns exec \
             NAME`, or mount it here (mount -t cgroup2 none {mount})"
        ),
        (None, None) => "no cgroup2 filesystem is mounted (checked /proc/self/mountinfo); root \
                         sandboxes need cgroup v2 (mount -t cgroup2 none /sys/fs/cgroup)"
            .to_string(),
    }
}

/// The v2 id of the cgroup at `path` (its directory's inode number).
pub fn id_of(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Stat {
            path: path.to_path_buf(),
            source,
        })
}

/// Whether the cgroup2 hierarchy is mounted with `favordynmods`. Without
/// it, moving a process between cgroups (what the daemon does for every
/// sandbox) first waits for an RCU grace period, milliseconds; with it,
/// forks and exits pay slightly more instead.
pub fn favors_dynmods() -> Option<bool> {
    let text = mountinfo::read().ok()?;
    let mounts = mountinfo::find(&text, "cgroup2");
    let m = mounts.iter().find(|m| m.root == "/").or(mounts.first())?;
    Some(m.super_options.split(',').any(|o| o == "favordynmods"))
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
        match fs::create_dir(&path) {
            Ok(()) => Ok(Self { path }),
            Err(source) => Err(CgroupError::Create { path, source }),
        }
    }

    /// An existing cgroup (for cleanup of a dead agent's sandbox).
    pub fn existing(path: PathBuf) -> Self {
        Self { path }
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup's v2 id (its directory's inode number), the key of its
    /// entries in the BPF policy maps.
    pub fn id(&self) -> Result<u64> {
        id_of(&self.path)
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
    /// [`crate::enforcer::bpf::bpffs::released`] before unpinning, for sockets no
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
            let path = || self.path.clone();
            let ids =
                sockdiag::cgroup_tree_ids(&self.path).map_err(|source| CgroupError::TreeIds {
                    path: path(),
                    source,
                })?;
            sockdiag::destroy_cgroup_sockets(&ids).map_err(|source| {
                CgroupError::DestroySockets {
                    path: path(),
                    source,
                }
            })?;
            for ns in &namespaces {
                let ino = ns.ino();
                ns.run(|| sockdiag::destroy_cgroup_sockets(&ids))
                    .map_err(|source| CgroupError::EnterNetns {
                        path: path(),
                        ino,
                        source,
                    })?
                    .map_err(|source| CgroupError::DestroySocketsIn {
                        path: path(),
                        ino,
                        source,
                    })?;
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
        Err(source) => return Err(CgroupError::Kill { path: kill, source }),
    }
    let start = Instant::now();
    let mut pause = Duration::from_micros(100);
    loop {
        if !populated(path)? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(CgroupError::KillTimeout {
                path: path.to_path_buf(),
                timeout,
            });
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
        Err(source) => {
            return Err(CgroupError::Events {
                path: events,
                source,
            })
        }
    };
    Ok(text.lines().any(|l| l.trim() == "populated 1"))
}

fn remove_tree(path: &Path) -> Result<()> {
    let list = |source| CgroupError::List {
        path: path.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(list(e)),
    };
    for entry in entries {
        let entry = entry.map_err(list)?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_cgroup2_is_explained() {
        let ip_netns = HostView {
            init_cgroup2: Some(PathBuf::from("/sys/fs/cgroup/unified")),
            ip_netns: Some("lab".into()),
        };
        let m = explain_no_cgroup2(&ip_netns);
        assert!(m.contains("`ip netns exec lab`"), "{m}");
        assert!(m.contains("nsenter --net=/run/netns/lab"), "{m}");
        assert!(m.contains("mount -t cgroup2 none /sys/fs/cgroup)"), "{m}");
        let hidden = HostView {
            init_cgroup2: Some(PathBuf::from("/sys/fs/cgroup")),
            ip_netns: None,
        };
        let m = explain_no_cgroup2(&hidden);
        assert!(m.contains("the host has it at /sys/fs/cgroup"), "{m}");
        assert!(m.contains("nsenter --net=/run/netns/NAME"), "{m}");
        let m = explain_no_cgroup2(&HostView::default());
        assert!(!m.contains("netns"), "{m}");
        assert!(m.contains("cgroup v2"), "{m}");
    }

    #[test]
    fn ip_netns_exec_is_recognised_by_its_sysfs() {
        // Only a source naming /run/netns/<it> counts; ordinary sysfs not.
        let plain = "22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw\n";
        assert_eq!(sysfs_netns(plain), None);
        let odd = "52 49 0:41 / /sys rw - sysfs no-such-netns-nono rw\n";
        assert_eq!(sysfs_netns(odd), None);
    }
}
