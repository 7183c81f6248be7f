//! The network namespaces a sandbox's processes are in, and running a
//! socket sweep inside one of them.
//!
//! Why: sock_diag only sees the sockets of the namespace its netlink socket
//! was made in. `nono-agent cleanup` may run in another namespace than the
//! agent it replaces (a CI step, `nsenter`, a container's shell), and a
//! sandbox may have made namespaces of its own; the sockets of a sandbox
//! live where its processes made them. So before the processes are killed
//! their namespaces are opened (the fds keep them alive), and after the kill
//! each one is swept from a short-lived thread that `setns`'d into it (a
//! network namespace switch is per thread and needs only `CAP_SYS_ADMIN`,
//! which the BPF enforcer has).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// Errors of entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `setns` into the namespace failed.
    #[error("entering network namespace {ino}")]
    Enter {
        /// The namespace's inode.
        ino: u64,
        /// The errno.
        #[source]
        err: nix::Error,
    },
    /// The helper thread could not start or panicked.
    #[error("network namespace helper thread: {0}")]
    Thread(String),
}

/// An open network namespace other than the agent's own.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    ino: u64,
}

impl NetNs {
    /// The namespace's inode (what `ip netns identify` and `/proc/PID/ns/net`
    /// show).
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns
    /// its result. The calling thread's namespace is untouched.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name("nono-netns".into())
                .spawn_scoped(s, || {
                    nix::sched::setns(self.file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|err| Error::Enter { ino: self.ino, err })?;
                    Ok(f())
                })
                .map_err(|e| Error::Thread(e.to_string()))?;
            h.join()
                .map_err(|_| Error::Thread("the helper thread panicked".into()))?
        })
    }
}

/// The inode of the calling thread's network namespace.
fn own_ino() -> Option<u64> {
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

/// Opens the network namespace of every process in the cgroup `dir` and
/// below, except the caller's own, one entry per namespace. Processes that
/// exit meanwhile are skipped: what they leave is in a namespace another
/// member holds, or, if none, the caller keeps the programs attached (see
/// `bpffs::released`).
pub fn of_cgroup_tree(dir: &Path) -> Vec<NetNs> {
    let own = own_ino();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
                let Ok(file) = File::open(format!("/proc/{pid}/ns/net")) else {
                    continue;
                };
                let Ok(meta) = file.metadata() else { continue };
                let ino = meta.ino();
                if Some(ino) != own && seen.insert(ino) {
                    out.push(NetNs { file, ino });
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_without_processes_has_no_namespaces() {
        assert!(of_cgroup_tree(Path::new("/nonexistent/nono-cgroup")).is_empty());
    }

    #[test]
    fn running_in_the_own_namespace_returns_the_result() {
        let file = File::open("/proc/thread-self/ns/net").unwrap();
        let ino = file.metadata().unwrap().ino();
        let ns = NetNs { file, ino };
        assert_eq!(ns.run(|| 7).unwrap(), 7);
    }
}
