//! Which files a sandbox's processes open, read and write, for `learn`
//! (root only).
//!
//! Landlock reports nothing about accesses it allows (its audit records
//! arise only on denial), so `learn` watches with fanotify instead: one
//! notification group with a filesystem mark (`FAN_MARK_FILESYSTEM`, which
//! needs `CAP_SYS_ADMIN`) on every real filesystem mounted, reporting opens
//! (`FAN_OPEN`, `FAN_OPEN_EXEC`, directories too) and closes of files
//! opened for writing (`FAN_CLOSE_WRITE`) by every process on the host.
//!
//! Events are told apart by the *mount* they went through, not by the
//! process: every sandbox runs in a mount namespace of its own, whose
//! mounts have ids no other namespace uses, and the descriptor fanotify
//! hands over is opened through the same mount as the access it reports
//! (`mnt_id` in `/proc/self/fdinfo`). So an event is the sandbox's exactly
//! when its mount is one of the sandbox namespace's (read from
//! `/proc/PID/mountinfo` once the command runs), however short-lived the
//! process was: a filter by process (`/proc/PID/cgroup`) loses the events of
//! processes reaped before they are read, which a shell script's command
//! substitutions are, all the time. Events that arrive before the
//! sandbox's mounts are known wait for them. The queue is unlimited; an
//! overflow would still be reported.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

/// Filesystem types whose accesses say nothing a profile could allow (or
/// that cannot carry a filesystem mark).
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "bpf",
    "devpts",
    "devtmpfs",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "efivarfs",
    "rpc_pipefs",
    "selinuxfs",
];

/// Why filesystem accesses cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum FsWatchError {
    /// fanotify_init failed (not root, or no fanotify in this kernel).
    #[error("fanotify is not available ({0}); it needs root (CAP_SYS_ADMIN)")]
    Init(nix::Error),
    /// No filesystem could be marked.
    #[error("no filesystem could be watched: {0}")]
    NoMark(String),
    /// The stop pipe or the thread could not be made.
    #[error("starting the filesystem watch: {0}")]
    Start(std::io::Error),
}

/// What the sandbox's processes did, by path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Files and directories opened (for reading or executing), with how
    /// many processes did. Processes, not opens: the kernel merges
    /// identical events of one process while they wait in the queue, so a
    /// count of opens would depend on timing.
    pub read: BTreeMap<PathBuf, u64>,
    /// Files closed after being opened for writing, with how many
    /// processes did.
    pub write: BTreeMap<PathBuf, u64>,
    /// The sandbox's mounts could not be read: events of unknown mounts
    /// that could not be told apart.
    pub unattributed: u64,
    /// Events were lost: the kernel's queue overflowed, or more distinct
    /// paths were opened than are kept.
    pub overflow: bool,
    /// Filesystems that could not be marked (mount point: why).
    pub unmarked: Vec<String>,
}

/// A running watch; [`Watch::finish`] stops it and returns what it saw.
pub struct Watch {
    stop: OwnedFd,
    sandbox: Arc<Mutex<Option<HashSet<u64>>>>,
    /// The sandbox's mount namespace, held until the events are read: a
    /// namespace whose last process is gone detaches its mounts, and a path
    /// read through a detached mount is relative to that mount (`/tmp/x`
    /// for `/var/tmp/x` through a `/var` mount).
    namespace: Mutex<Option<std::fs::File>>,
    thread: JoinHandle<Seen>,
}

impl Watch {
    /// Starts watching every real filesystem in `mountinfo`.
    pub fn start(mountinfo: &str) -> Result<Watch, FsWatchError> {
        let group = Fanotify::init(
            // Unlimited queue (root only): every process on the host feeds
            // it while the run lasts (a busy build host opens thousands of
            // files a second), and a dropped event would be a path missing
            // from the profile.
            InitFlags::FAN_CLASS_NOTIF
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                | InitFlags::FAN_UNLIMITED_QUEUE,
            EventFFlags::O_RDONLY
                | EventFFlags::O_LARGEFILE
                | EventFFlags::O_CLOEXEC
                | EventFFlags::O_NOATIME,
        )
        .map_err(FsWatchError::Init)?;
        // FAN_ONDIR: directories opened (listed) count as reads too.
        let mask = MaskFlags::FAN_OPEN
            | MaskFlags::FAN_OPEN_EXEC
            | MaskFlags::FAN_CLOSE_WRITE
            | MaskFlags::FAN_ONDIR;
        let mut unmarked = Vec::new();
        let mut marked = 0usize;
        let mut seen_devices = Vec::new();
        for mp in real_mount_points(mountinfo) {
            use std::os::unix::fs::MetadataExt as _;
            let Ok(m) = std::fs::metadata(&mp) else {
                continue;
            };
            if seen_devices.contains(&m.dev()) {
                continue;
            }
            seen_devices.push(m.dev());
            match group.mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
                mask,
                nix::fcntl::AT_FDCWD,
                Some(mp.as_path()),
            ) {
                Ok(()) => marked += 1,
                Err(e) => unmarked.push(format!("{}: {e}", mp.display())),
            }
        }
        if marked == 0 {
            return Err(FsWatchError::NoMark(unmarked.join("; ")));
        }
        let (stop_rd, stop_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| FsWatchError::Start(std::io::Error::from_raw_os_error(e as i32)))?;
        let sandbox = Arc::new(Mutex::new(None));
        let shared = sandbox.clone();
        let thread = std::thread::Builder::new()
            .name("nono-fswatch".into())
            .spawn(move || run(group, stop_rd, shared, unmarked))
            .map_err(FsWatchError::Start)?;
        Ok(Watch {
            stop: stop_wr,
            sandbox,
            namespace: Mutex::new(None),
            thread,
        })
    }

    /// The sandbox runs as `pid` (in its own mount namespace, set up
    /// before its exec): from now on its mounts are known.
    pub fn sandbox_started(&self, pid: i32) {
        if let (Ok(ns), Ok(mut g)) = (
            std::fs::File::open(format!("/proc/{pid}/ns/mnt")),
            self.namespace.lock(),
        ) {
            *g = Some(ns);
        }
        let ids = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .map(|t| mount_ids(&t))
            .ok();
        if let (Some(ids), Ok(mut g)) = (ids, self.sandbox.lock()) {
            *g = Some(ids);
        }
    }

    /// Stops the watch (after reading what is queued) and returns what the
    /// sandbox's processes did.
    pub fn finish(self) -> Seen {
        drop(self.stop);
        let seen = self.thread.join().unwrap_or_default();
        drop(self.namespace);
        seen
    }
}

/// The mount ids (first field) of a mountinfo text.
fn mount_ids(mountinfo: &str) -> HashSet<u64> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Mount points of the real filesystems in `mountinfo`.
fn real_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mp = pre.split_whitespace().nth(4)?;
            (!PSEUDO.contains(&fstype)).then(|| PathBuf::from(crate::mountinfo::unescape(mp)))
        })
        .collect()
}

/// An event of an unknown mount, kept until the sandbox's mounts are known.
struct Pending {
    mnt: u64,
    pid: i32,
    path: PathBuf,
    write: bool,
}

fn run(
    group: Fanotify,
    stop: OwnedFd,
    sandbox: Arc<Mutex<Option<HashSet<u64>>>>,
    unmarked: Vec<String>,
) -> Seen {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut seen = Seen {
        unmarked,
        ..Seen::default()
    };
    let mut pending: Vec<Pending> = Vec::new();
    // (path, pid, write) already counted; bounded like the maps.
    let mut counted: HashSet<(PathBuf, i32, bool)> = HashSet::new();
    loop {
        let mut fds = [
            PollFd::new(group.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let stopping = fds[1].revents().is_some_and(|r| !r.is_empty());
        let known = sandbox.lock().ok().and_then(|g| g.clone());
        drain(&group, known.as_ref(), &mut pending, &mut seen);
        if let Some(ids) = &known {
            for p in pending.drain(..) {
                if !ids.contains(&p.mnt) {
                    continue;
                }
                if counted.len() >= 4 * MAX_PATHS {
                    seen.overflow = true;
                    continue;
                }
                if counted.insert((p.path.clone(), p.pid, p.write)) {
                    record(&mut seen, p.path, p.write);
                }
            }
        }
        if stopping {
            // The stop comes once the sandbox's processes are gone: what
            // they caused is queued by now, and read above.
            if known.is_none() {
                seen.unattributed += pending.len() as u64;
            }
            return seen;
        }
    }
}

/// Distinct paths kept per kind: a command that opens a million files
/// cannot make the agent hold a million paths (the profile lists at most
/// `learn::MAX_ENTRIES` anyway); past this, events count as lost.
const MAX_PATHS: usize = 65536;

fn record(seen: &mut Seen, path: PathBuf, write: bool) {
    let into = if write {
        &mut seen.write
    } else {
        &mut seen.read
    };
    if into.len() >= MAX_PATHS && !into.contains_key(&path) {
        seen.overflow = true;
        return;
    }
    *into.entry(path).or_default() += 1;
}

/// The mount a descriptor was opened through.
fn mnt_id(fd: i32) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads what is queued: events through the sandbox's mounts (when they
/// are known; all of unknown mounts until then) go to `pending`. Mount
/// ids are reused once a mount is gone, so only the sandbox's own set,
/// read while it runs, tells them apart.
fn drain(
    group: &Fanotify,
    sandbox: Option<&HashSet<u64>>,
    pending: &mut Vec<Pending>,
    seen: &mut Seen,
) {
    while let Ok(events) = group.read_events() {
        if events.is_empty() {
            return;
        }
        for ev in events {
            let mask = ev.mask();
            if mask.contains(MaskFlags::FAN_Q_OVERFLOW) {
                seen.overflow = true;
                continue;
            }
            let Some(fd) = ev.fd() else {
                continue;
            };
            let fd = fd.as_raw_fd();
            let Some(mnt) = mnt_id(fd) else {
                continue;
            };
            // Every other process on the host: skipped before its path is
            // read.
            if sandbox.is_some_and(|ids| !ids.contains(&mnt)) {
                continue;
            }
            let write = mask.contains(MaskFlags::FAN_CLOSE_WRITE);
            if !write && !mask.intersects(MaskFlags::FAN_OPEN | MaskFlags::FAN_OPEN_EXEC) {
                continue;
            }
            // The path as the sandbox's namespace names it.
            let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
                continue;
            };
            pending.push(Pending {
                mnt,
                pid: ev.pid(),
                path,
                write,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_filesystems_are_not_marked() {
        let mi = "22 1 0:21 / /proc rw - proc proc rw\n\
                  23 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                  24 1 0:22 / /tmp rw - tmpfs tmpfs rw\n\
                  25 1 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                  26 1 0:24 / /mnt/with\\040space rw - ext4 /dev/sdb rw\n";
        assert_eq!(
            real_mount_points(mi),
            [
                PathBuf::from("/"),
                PathBuf::from("/tmp"),
                PathBuf::from("/mnt/with space")
            ]
        );
    }

    #[test]
    fn mount_ids_are_the_first_field() {
        let ids = mount_ids("22 1 0:21 / /proc rw - proc proc rw\n23 1 8:1 / / rw - ext4 x rw\n");
        assert_eq!(ids, HashSet::from([22, 23]));
    }
}
