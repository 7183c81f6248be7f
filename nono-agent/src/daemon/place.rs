//! Moving a client's child into its sandbox cgroup, only if it is the
//! client's own, and without a pid-reuse window.
//!
//! The move itself (`cgroup.procs`) takes a pid number. Between checking
//! the process behind the client's pidfd and writing its number, the client
//! could kill and reap its child and let the number go to someone else's
//! new process, which would then be moved into (and later killed with) the
//! sandbox. So the daemon first *holds* the process with `PTRACE_SEIZE`
//! (which neither stops nor signals it): a traced process that dies stays a
//! zombie owned by the tracer, its parent cannot reap it, and its number
//! cannot be reused. Checks and the move happen while it is held; the hold
//! is on a short-lived thread, and the kernel detaches a thread's tracees
//! when it exits.

use std::io;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::Path;
use std::sync::{mpsc, Mutex};

use super::process::{self, Peer, ProcInfo, ProcessError};

/// Why a process was not placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// Its identity could not be read.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// It could not be held (already traced, or gone).
    #[error("holding the process with ptrace")]
    Hold(#[source] io::Error),
    /// The client that asked is gone.
    #[error("the requesting process exited")]
    PeerGone,
    /// It is not a process (a thread's pidfd).
    #[error("pid {0} is a thread, not a process")]
    Thread(i32),
    /// It is not the client's child.
    #[error("pid {pid} is not a child of the requesting process {peer} (its parent is {ppid})")]
    NotChild {
        /// The process.
        pid: i32,
        /// Its parent.
        ppid: i32,
        /// The client.
        peer: i32,
    },
    /// It does not run with the client's uid (all four ids must match).
    #[error("pid {pid} does not run as uid {uid} (real, effective, saved, filesystem: {uids:?})")]
    ForeignUid {
        /// The process.
        pid: i32,
        /// The client's uid.
        uid: u32,
        /// Its uids.
        uids: [u32; 4],
    },
    /// It is not in the client's own cgroup (moved elsewhere already).
    #[error("pid {pid} is in cgroup {found}, not in the requesting process's cgroup {expected}")]
    WrongCgroup {
        /// The process.
        pid: i32,
        /// Where it is.
        found: String,
        /// The client's cgroup.
        expected: String,
    },
    /// Writing `cgroup.procs` failed.
    #[error("moving pid {pid} into {}", .path.display())]
    Move {
        /// The process.
        pid: i32,
        /// The `cgroup.procs` file.
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// After the move the process is not where it should be.
    #[error("pid {0} is not in the sandbox cgroup after the move")]
    NotMoved(i32),
    /// The helper thread could not be started.
    #[error("starting the placement thread")]
    Spawn(#[source] io::Error),
    /// The helper thread could not run.
    #[error("the placement thread failed")]
    HelperPanicked,
}

/// Checks that `child` (a pidfd the client sent) is the client's own child,
/// runs with its uid and sits in its cgroup (`peer_cgroup`, relative to the
/// hierarchy root), then moves it into the cgroup at `target_dir`
/// (`target_rel` relative to the root). The work runs on a thread of its
/// own, awaited without blocking the caller's runtime: the ptrace hold ends
/// when that thread exits. The thread was started ahead of time
/// ([`STANDBY`]): placement is on every sandbox's start-up path.
pub async fn place(
    child: OwnedFd,
    peer: Peer,
    peer_cgroup: String,
    target_dir: std::path::PathBuf,
    target_rel: String,
) -> Result<(), PlaceError> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let mut job = Job {
        child,
        peer,
        peer_cgroup,
        target_dir,
        target_rel,
        reply,
    };
    let standby = STANDBY.lock().ok().and_then(|mut s| s.take());
    if let Some(thread) = standby {
        match thread.send(job) {
            Ok(()) => {
                refill_standby();
                return rx.await.map_err(|_| PlaceError::HelperPanicked)?;
            }
            // Its thread is gone: take the job back.
            Err(mpsc::SendError(j)) => job = j,
        }
    }
    start_thread()
        .map_err(PlaceError::Spawn)?
        .send(job)
        .map_err(|_| PlaceError::HelperPanicked)?;
    refill_standby();
    rx.await.map_err(|_| PlaceError::HelperPanicked)?
}

/// One placement, for one thread.
struct Job {
    child: OwnedFd,
    peer: Peer,
    peer_cgroup: String,
    target_dir: std::path::PathBuf,
    target_rel: String,
    reply: tokio::sync::oneshot::Sender<Result<(), PlaceError>>,
}

/// A placement thread started ahead of time, waiting for its one job:
/// a thread started on demand took 0.13-0.57 ms here before it ran, on
/// every sandbox's start-up path. Each thread still makes one placement
/// and exits (its exit ends the ptrace hold); the next one is started
/// while the current one works. At most one waits (an idle daemon keeps
/// one thread more).
static STANDBY: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

/// Starts the next standby thread (if that fails, the next placement
/// starts its own).
fn refill_standby() {
    if let Ok(thread) = start_thread() {
        if let Ok(mut s) = STANDBY.lock() {
            // One that another placement started meanwhile is dropped, and
            // its thread exits without a job.
            *s = Some(thread);
        }
    }
}

/// A placement thread: waits for one job, does it, exits.
fn start_thread() -> io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("nono-place".into())
        .spawn(move || {
            // The allocator's per-thread state, set up before the job
            // (the identity reads use 4 KiB buffers).
            drop(std::hint::black_box(Vec::<u8>::with_capacity(4096)));
            if let Ok(job) = rx.recv() {
                let r = held_place(
                    &job.child,
                    &job.peer,
                    &job.peer_cgroup,
                    &job.target_dir,
                    &job.target_rel,
                );
                let _ = job.reply.send(r);
            }
        })?;
    Ok(tx)
}

/// The body of [`place`], on its own thread: the ptrace hold ends when the
/// thread exits.
fn held_place(
    child: &OwnedFd,
    peer: &Peer,
    peer_cgroup: &str,
    target_dir: &Path,
    target_rel: &str,
) -> Result<(), PlaceError> {
    let pid = process::pidfd_pid(child.as_fd())?;
    // SAFETY: PTRACE_SEIZE takes no pointers; it fails for a process we may
    // not trace or one traced already.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SEIZE,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    if r != 0 {
        return Err(PlaceError::Hold(io::Error::last_os_error()));
    }
    // Held. If the pidfd's process still runs, the number we seized is its.
    let info = process::identity_of(child.as_fd(), pid)?;
    if !process::running(peer.pidfd.as_fd()) {
        return Err(PlaceError::PeerGone);
    }
    check(&info, peer, peer_cgroup)?;
    let procs = target_dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).map_err(|source| PlaceError::Move {
        pid,
        path: procs.clone(),
        source,
    })?;
    if process::cgroup_of(child.as_fd(), pid)? != target_rel {
        return Err(PlaceError::NotMoved(pid));
    }
    Ok(())
}

/// The pure part: the process is the peer's child, with its uid, in its
/// cgroup.
pub fn check(info: &ProcInfo, peer: &Peer, peer_cgroup: &str) -> Result<(), PlaceError> {
    if info.tgid != info.pid {
        return Err(PlaceError::Thread(info.pid));
    }
    if info.ppid != peer.pid {
        return Err(PlaceError::NotChild {
            pid: info.pid,
            ppid: info.ppid,
            peer: peer.pid,
        });
    }
    if info.uids.iter().any(|&u| u != peer.uid) {
        return Err(PlaceError::ForeignUid {
            pid: info.pid,
            uid: peer.uid,
            uids: info.uids,
        });
    }
    if info.cgroup != peer_cgroup {
        return Err(PlaceError::WrongCgroup {
            pid: info.pid,
            found: info.cgroup.clone(),
            expected: peer_cgroup.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            pid: 100,
            uid: 1000,
            gid: 1000,
            pidfd: std::fs::File::open("/dev/null").unwrap().into(),
        }
    }

    fn child() -> ProcInfo {
        ProcInfo {
            pid: 101,
            tgid: 101,
            ppid: 100,
            uids: [1000; 4],
            cgroup: "/user.slice".into(),
            start_time: 1,
        }
    }

    #[test]
    fn only_the_callers_own_child_with_its_uid_in_its_cgroup_passes() {
        let p = peer();
        assert!(check(&child(), &p, "/user.slice").is_ok());
        let mut c = child();
        c.ppid = 1;
        assert!(matches!(
            check(&c, &p, "/user.slice"),
            Err(PlaceError::NotChild { .. })
        ));
        let mut c = child();
        c.uids[2] = 0;
        assert!(matches!(
            check(&c, &p, "/user.slice"),
            Err(PlaceError::ForeignUid { .. })
        ));
        let mut c = child();
        c.tgid = 100;
        assert!(matches!(
            check(&c, &p, "/user.slice"),
            Err(PlaceError::Thread(101))
        ));
        assert!(matches!(
            check(&child(), &p, "/nono-daemon/x"),
            Err(PlaceError::WrongCgroup { .. })
        ));
    }
}
