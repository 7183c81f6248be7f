//! What one sandbox holds in the kernel (cgroup, BPF pins and links, the
//! owner lock) and the order in which it is given back.

use std::path::PathBuf;
use std::time::Duration;

use crate::enforcer::bpf::{bpffs, loader};
use crate::sandbox::{cgroup, registry};

/// Everything a sandbox created that must be undone, in reverse order of
/// creation; dropping it tears it down.
pub struct Resources {
    /// The sandbox id (also the cgroup's and the pin directory's name).
    pub id: String,
    /// The sandbox's cgroup, once created.
    pub cgroup: Option<cgroup::Cgroup>,
    /// The bpffs directory holding its pinned programs and maps.
    pub pin_dir: Option<PathBuf>,
    /// The attached programs' links.
    pub attached: Option<loader::Keep>,
    /// Held while the agent lives: `cleanup` leaves sandboxes with a live
    /// owner alone.
    pub lock: Option<registry::OwnerLock>,
}

impl Resources {
    /// Nothing created yet.
    pub fn new(id: String, lock: Option<registry::OwnerLock>) -> Self {
        Self {
            id,
            cgroup: None,
            pin_dir: None,
            attached: None,
            lock,
        }
    }

    /// Kill, remove the cgroup, then unpin. Errors are reported, not fatal:
    /// teardown goes as far as it safely can.
    pub fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut cgroup_gone = true;
        // Sockets outliving the sandbox matter only when programs judged
        // them (BPF) and the sandbox made any; an unreadable count means
        // look anyway.
        let attached = &self.attached;
        let pinned = self.pin_dir.is_some();
        let sockets = || match attached {
            Some(k) if k.sockets_created() == Some(0) => cgroup::Sockets::Keep,
            Some(_) => cgroup::Sockets::Destroy,
            None if pinned => cgroup::Sockets::Destroy,
            None => cgroup::Sockets::Keep,
        };
        let mut destroyed = cgroup::Sockets::Keep;
        if let Some(cg) = self.cgroup.take() {
            match cg.destroy(Duration::from_secs(10), sockets) {
                Ok(chosen) => destroyed = chosen,
                Err(e) => {
                    errors.push(crate::util::chain(&e));
                    cgroup_gone = false;
                }
            }
        }
        // A socket no sweep reached (another network namespace, kept alive
        // by a descriptor passed out) still holds the programs: unpinning
        // now would let it send unjudged.
        let mut sockets_gone = true;
        if cgroup_gone && destroyed == cgroup::Sockets::Destroy {
            if let Some(dir) = &self.pin_dir {
                match bpffs::wait_released(dir, Duration::from_secs(2)) {
                    Ok(true) => {}
                    Ok(false) => {
                        errors.push(format!(
                            "a socket of the sandbox outlives it out of the agent's reach; its \
                             programs stay attached to it (pins in {}) until it closes, and \
                             `nono-agent cleanup` removes them after that",
                            dir.display()
                        ));
                        sockets_gone = false;
                    }
                    Err(e) => {
                        errors.push(crate::util::chain(&e));
                        sockets_gone = false;
                    }
                }
            }
        }
        // Never unpin while processes may remain: they would run unconfined.
        if cgroup_gone && sockets_gone {
            if let Some(dir) = self.pin_dir.take() {
                if let Err(e) = bpffs::remove_pins(&dir) {
                    errors.push(crate::util::chain(&e));
                }
            }
            self.attached = None;
        } else {
            // Leave the pins (and our link fds leak into process exit) so the
            // programs stay attached; `nono-agent cleanup` finishes the job.
            std::mem::forget(self.attached.take());
            self.pin_dir = None;
        }
        errors
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("nono-agent: sandbox {}: cleanup: {e}", self.id);
        }
    }
}
