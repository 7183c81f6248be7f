//! Guards that remove what they create, also on panic: scratch
//! directories, files, bind mounts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys;

use super::unique;

/// A directory `BASE/nono-prof-...-TAG` (mode 0755), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(base: &str, tag: &str) -> Scratch {
        let base = Path::new(base);
        assert!(
            base.is_dir(),
            "{} does not exist (needed as a place outside the profile's paths)",
            base.display()
        );
        let p = base.join(unique(tag));
        fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        Scratch(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `self.0` as a string (for command lines).
    pub fn s(&self) -> String {
        self.0.display().to_string()
    }

    /// Writes `name` inside with `contents`; returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A path (file, symlink or socket) removed on drop if it exists; for files
/// a sandbox must not be able to create (they are removed should it manage to).
pub struct RemoveOnDrop(pub PathBuf);

impl RemoveOnDrop {
    /// Panics if `p` already exists (the tests use fresh unique names).
    pub fn fresh(p: PathBuf) -> RemoveOnDrop {
        assert!(
            fs::symlink_metadata(&p).is_err(),
            "{} already exists",
            p.display()
        );
        RemoveOnDrop(p)
    }

    pub fn s(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if fs::symlink_metadata(&self.0).is_ok() {
            let _ = fs::remove_file(&self.0);
        }
    }
}

/// `mount --bind SRC TARGET` with TARGET a new empty file; on drop the
/// mount is detached and the file removed.
pub struct BindMount {
    target: RemoveOnDrop,
    mounted: bool,
}

impl BindMount {
    pub fn new(src: &Path, target: PathBuf) -> BindMount {
        let mut me = BindMount {
            target: RemoveOnDrop::fresh(target),
            mounted: false,
        };
        fs::write(&me.target.0, b"").expect("create bind mount target");
        let out = sys::run_timeout(
            Command::new("mount")
                .arg("--bind")
                .arg(src)
                .arg(&me.target.0),
            sys::CMD_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "mount --bind {} {}: {}",
            src.display(),
            me.target.0.display(),
            out.describe()
        );
        me.mounted = true;
        me
    }

    pub fn s(&self) -> String {
        self.target.s()
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = sys::run_timeout(
                Command::new("umount").arg("-l").arg(&self.target.0),
                sys::CMD_TIMEOUT,
            );
        }
    }
}
