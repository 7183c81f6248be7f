//! Which sandboxes exist and whether their agent is alive.
//!
//! Each agent holds an exclusive `flock` on `<state>/<id>.lock` for its whole
//! life. The kernel drops the lock when the agent dies, however it dies, so
//! "lock can be taken" is a reliable "owner is gone" test with no pid reuse
//! problem.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::util::UtilError;

/// Errors of making sandbox ids and of taking owner locks.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No random id could be made, or the state directory could not be
    /// created.
    #[error(transparent)]
    Util(#[from] UtilError),
    /// A lock file could not be created.
    #[error("creating {}", .path.display())]
    Create {
        /// The lock file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A lock file could not be opened.
    #[error("opening {}", .path.display())]
    Open {
        /// The lock file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `flock` failed (for an owner lock: another agent holds it).
    #[error("locking {}", .path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// The lock just taken could not be compared with the file on disk.
    #[error("fstat lock")]
    Fstat(#[source] std::io::Error),
    /// Sweepers kept unlinking the lock file between open and lock.
    #[error("could not take the owner lock {}", .path.display())]
    Contended {
        /// The lock file.
        path: PathBuf,
    },
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Runtime state directory (lock files; the daemon's socket and, in
/// 0700 subdirectories, its records). Writable by root only, traversable by
/// everyone (the daemon socket must be reachable); hidden from sandboxes
/// of `exec` as root.
pub const STATE_DIR: &str = "/run/nono-agent";

/// A fresh random sandbox id: 16 hex digits.
pub fn new_id() -> Result<String> {
    Ok(crate::util::random_hex(8, "a sandbox id")?)
}

/// Whether `s` has the shape of a sandbox id (guards paths built from
/// directory names found on disk).
pub fn is_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// The state directory, created 0755 if missing (see [`STATE_DIR`]).
pub fn state_dir() -> Result<PathBuf> {
    let p = PathBuf::from(STATE_DIR);
    crate::util::ensure_dir(&p, Some(0o755))?;
    Ok(p)
}

/// The lock an agent holds for as long as its sandbox exists.
#[derive(Debug)]
pub struct OwnerLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl OwnerLock {
    /// Creates and locks `<state>/<id>.lock`.
    pub fn acquire(state: &Path, id: &str) -> Result<Self> {
        let path = state.join(format!("{id}.lock"));
        for _ in 0..3 {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|source| RegistryError::Create {
                    path: path.clone(),
                    source,
                })?;
            let mut lock =
                Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, source)| {
                    RegistryError::Lock {
                        path: path.clone(),
                        source,
                    }
                })?;
            // A sweeper may have unlinked the file between our open and our
            // lock; a lock on an unlinked file protects nothing, so retry.
            let held = lock.metadata().map_err(RegistryError::Fstat)?;
            match fs::metadata(&path) {
                Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => {
                    let _ = writeln!(&mut *lock, "{}", std::process::id());
                    return Ok(Self { path, _lock: lock });
                }
                _ => continue,
            }
        }
        Err(RegistryError::Contended { path })
    }
}

impl Drop for OwnerLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so nobody can mistake the
        // sandbox for abandoned before its cleanup finished.
        let _ = fs::remove_file(&self.path);
    }
}

/// A stale sandbox's lock, held while it is being cleaned up.
pub struct StaleLock {
    path: PathBuf,
    _lock: Option<Flock<File>>,
}

impl StaleLock {
    /// Removes the lock file (call after the sandbox is fully removed).
    pub fn release(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Takes `id`'s lock if its owner is gone; `None` if an agent still holds it.
pub fn try_claim_stale(state: &Path, id: &str) -> Result<Option<StaleLock>> {
    let path = state.join(format!("{id}.lock"));
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        // No lock file: the agent died before creating it or after removing
        // it; either way nobody owns the sandbox.
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(Some(StaleLock { path, _lock: None }))
        }
        Err(source) => return Err(RegistryError::Open { path, source }),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(StaleLock {
            path,
            _lock: Some(lock),
        })),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, source)) => Err(RegistryError::Lock { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_and_distinct() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert!(is_id(&a) && is_id(&b));
        assert_ne!(a, b);
        assert!(!is_id("../etc"));
        assert!(!is_id("ABCDEF0123456789"));
    }

    #[test]
    fn lock_is_exclusive_until_dropped() {
        let dir = std::env::temp_dir().join(format!("nono-lock-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let owner = OwnerLock::acquire(&dir, "0123456789abcdef").unwrap();
        assert!(try_claim_stale(&dir, "0123456789abcdef").unwrap().is_none());
        drop(owner);
        assert!(try_claim_stale(&dir, "0123456789abcdef").unwrap().is_some());
        fs::remove_dir_all(&dir).unwrap();
    }
}
