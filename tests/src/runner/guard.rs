//! `SandboxGuard`: removes what a sandbox may have left behind, also on
//! panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sys;

use super::result::ProbeResult;
use super::RunAs;

/// Removes what a sandbox may have left behind (processes in its cgroup, the
/// cgroup tree, the pin directory). Used by tests after their assertions so a
/// failing agent does not pollute later runs; also runs on panic.
pub struct SandboxGuard {
    pub cgroup: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub pids: Vec<i32>,
    /// Processes whose command line carries one of these are killed.
    pub markers: Vec<String>,
    /// Processes of these ([`RunAs::fresh`]) uids are killed.
    pub uids: Vec<u32>,
}

impl SandboxGuard {
    pub fn new() -> SandboxGuard {
        SandboxGuard {
            cgroup: None,
            pin_dir: None,
            pids: Vec::new(),
            markers: Vec::new(),
            uids: Vec::new(),
        }
    }

    /// Records the cgroup/pin dir, marker and fresh uid reported by a probe
    /// running in a sandbox.
    pub fn track(&mut self, r: &ProbeResult) {
        if let Some(c) = &r.cgroup {
            self.cgroup = Some(PathBuf::from(c));
        }
        if let Some(p) = &r.pin_dir {
            self.pin_dir = Some(PathBuf::from(p));
        }
        if let Some(m) = r.raw["marker"].as_str() {
            if !self.markers.iter().any(|x| x == m) {
                self.markers.push(m.to_string());
            }
        }
        if let Some(u) = r.raw["uid"].as_u64() {
            self.track_uid(u as u32);
        }
    }

    /// Records a [`RunAs::fresh`] uid (others are ignored).
    pub fn track_uid(&mut self, uid: u32) {
        if RunAs::is_fresh(uid) && !self.uids.contains(&uid) {
            self.uids.push(uid);
        }
    }

    /// Live processes left by the tracked runs (by marker and fresh uid).
    pub fn leftovers(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .markers
            .iter()
            .flat_map(|m| sys::pids_with_marker(m))
            .chain(self.uids.iter().flat_map(|&u| sys::pids_of_uid(u)))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl Default for SandboxGuard {
    fn default() -> Self {
        Self::new()
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        for &pid in &self.pids {
            sys::kill_pid(pid);
        }
        for _ in 0..3 {
            let left = self.leftovers();
            if left.is_empty() {
                break;
            }
            left.into_iter().for_each(sys::kill_pid);
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(cg) = &self.cgroup {
            // Only ever touch directories under <cgroup2>/nono/.
            let under_nono = sys::cgroup2_mount()
                .map(|m| cg.starts_with(m.join("nono")))
                .unwrap_or(false);
            if under_nono && cg.exists() {
                let _ = fs::write(cg.join("cgroup.kill"), "1");
                sys::wait_until(Duration::from_secs(2), || {
                    fs::read_to_string(cg.join("cgroup.procs"))
                        .map(|s| s.trim().is_empty())
                        .unwrap_or(true)
                });
                remove_cgroup_tree(cg);
            }
        }
        if let Some(p) = &self.pin_dir {
            let under_bpffs = sys::bpffs_mount()
                .map(|m| p.starts_with(m))
                .unwrap_or(false);
            if under_bpffs && p.exists() {
                let _ = fs::remove_dir_all(p);
            }
        }
    }
}
