//! The trust bundle of a sandbox with credentials: the system's roots,
//! any `--upstream-ca`, and the sandbox's own CA certificate (never its
//! key: that stays in the proxy's memory), in a directory of its own
//! (`$TMPDIR/nono-agent-ca.<id>`, 0700, owned by the command's user) that
//! the sandbox is given read access to.
//!
//! It is removed when the agent drops it (every exit, signals included:
//! the agent forwards them and returns). An agent killed with SIGKILL
//! leaves it: the agent holds a `flock` on `.lock` inside for its life, so
//! the next `exec` with credentials ([`sweep_stale`]) finds the lock free
//! and removes the directory.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The directory name's prefix.
const PREFIX: &str = "nono-agent-ca.";
/// The bundle's file name.
const FILE: &str = "ca-bundle.pem";

/// Why the bundle could not be made.
#[derive(Debug, thiserror::Error)]
#[error("the sandbox's CA bundle {}", .path.display())]
pub struct BundleError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError {
        path: path.to_path_buf(),
        source,
    }
}

/// A sandbox's bundle directory; removed on drop.
pub struct Bundle {
    dir: PathBuf,
    _lock: Option<Flock<File>>,
}

/// Where bundles go: `$TMPDIR` or `/tmp`.
pub fn base_dir() -> PathBuf {
    std::env::temp_dir()
}

impl Bundle {
    /// Creates the (empty) directory for sandbox `id`, owned by `owner`
    /// (uid, gid) when given. Made before the filesystem rules, which must
    /// name an existing directory.
    pub fn create(base: &Path, id: &str, owner: Option<(u32, u32)>) -> Result<Self, BundleError> {
        let dir = base.join(format!("{PREFIX}{id}"));
        // Fails if anything (a planted symlink included) is there already.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(err(&dir))?;
        let mut bundle = Self { dir, _lock: None };
        let lock_path = bundle.dir.join(".lock");
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(err(&lock_path))?;
        bundle._lock = Some(
            Flock::lock(lock, FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| err(&lock_path)(e.into()))?,
        );
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&bundle.dir, Some(uid), Some(gid))
                .map_err(err(&bundle.dir))?;
        }
        Ok(bundle)
    }

    /// The directory (the sandbox's read rule).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the bundle (read-only, owned by `owner` when given) and
    /// returns its path.
    pub fn write(&self, pem: &str, owner: Option<(u32, u32)>) -> Result<PathBuf, BundleError> {
        let path = self.dir.join(FILE);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(err(&path))?;
        f.write_all(pem.as_bytes()).map_err(err(&path))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(err(&path))?;
        }
        Ok(path)
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The bundle's text: the system's roots, the extra certificates, then the
/// sandbox's CA.
pub fn contents(ca_pem: &str, extra: &[nono_proxy::mitm::CertificateDer<'static>]) -> String {
    let (roots, _) = nono_proxy::mitm::trust_roots(extra);
    let mut pem = nono_proxy::mitm::to_pem(&roots);
    pem.push_str(ca_pem);
    pem
}

/// Removes the bundle directories in `base` that this user owns and whose
/// agent is gone (its lock can be taken). Returns what could not be
/// removed.
pub fn sweep_stale(base: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    let Ok(entries) = fs::read_dir(base) else {
        return errors;
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if !crate::sandbox::registry::is_id(id) {
            continue;
        }
        let dir = e.path();
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        // Root sweeps every user's (it made them for --user); others their own.
        if !meta.is_dir() || (me != 0 && meta.uid() != me) {
            continue;
        }
        let lock = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(".lock"));
        let stale = match lock {
            Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok(),
            // No lock file: a crash between mkdir and the lock.
            Err(_) => true,
        };
        if stale {
            if let Err(e) = fs::remove_dir_all(&dir) {
                errors.push(format!("{}: {e}", dir.display()));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_removed_and_swept() {
        let base = std::env::temp_dir().join(format!("nono-cabundle-test-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        let b = Bundle::create(&base, "0123456789abcdef", None).unwrap();
        let p = b.write("PEM", None).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "PEM");
        // A second one for the same id is refused (nothing is reused).
        assert!(Bundle::create(&base, "0123456789abcdef", None).is_err());
        // Alive: the sweep leaves it.
        assert!(sweep_stale(&base).is_empty());
        assert!(p.exists());
        let dir = b.dir().to_path_buf();
        drop(b);
        assert!(!dir.exists());
        // A dead agent's (lock free) is swept.
        let b = Bundle::create(&base, "fedcba9876543210", None).unwrap();
        let dir = b.dir().to_path_buf();
        std::mem::forget(b);
        // The forgotten lock is still held by this process's descriptor;
        // flock locks are per open file, so a new open can take it only
        // once that descriptor is gone: simulate the crash by removing
        // the lock file's holder, i.e. replace the file.
        fs::remove_file(dir.join(".lock")).unwrap();
        File::create(dir.join(".lock")).unwrap();
        assert!(sweep_stale(&base).is_empty());
        assert!(!dir.exists());
        fs::remove_dir_all(&base).unwrap();
    }
}
