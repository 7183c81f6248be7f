//! One file per live sandbox in the daemon's state directory, so a daemon
//! that was killed and restarted knows what the pinned maps hold, who owns
//! each sandbox, and which ones to remove.
//!
//! Written (atomically: temporary file, then rename) before the sandbox's
//! cgroup and map entries exist, removed after they are gone: a record
//! without a cgroup is a creation that did not finish.

use nono_common::Policy;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::protocol::WirePolicy;

/// Errors of reading and writing records.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A record or the directory could not be written or removed.
    #[error("{what} {}", .path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = RecordError> = std::result::Result<T, E>;

/// What the daemon must remember about a sandbox across a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The sandbox id.
    pub id: String,
    /// Its cgroup, relative to the hierarchy root.
    pub cgroup: String,
    /// Its cgroup id (the key of its map entries).
    pub cgroup_id: u64,
    /// The owner's uid.
    pub uid: u32,
    /// The owner's pid and start time: together they name the process.
    pub owner_pid: i32,
    /// See `owner_pid`.
    pub owner_start: u64,
    /// The secret a reconnecting owner proves itself with.
    pub token: String,
    /// The policy in force (to remove its entries).
    pub policy: WirePolicy,
    /// The sandbox it is nested in, if any.
    pub parent: Option<String>,
}

impl Record {
    /// The policy as the maps hold it.
    pub fn kernel_policy(&self) -> Policy {
        super::policy::to_kernel(&self.policy)
    }
}

/// The records directory; it and the state directory are made 0700.
pub fn dir(state: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let d = state.join("sandboxes");
    // The state directory and the records are root's alone (0700): the
    // records hold resume tokens. Above them (`/run/nono-agent`, where the
    // default socket lives) the mode is left as it is.
    if let Some(parent) = state.parent() {
        fs::create_dir_all(parent).map_err(|source| RecordError::Io {
            what: "creating",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .map_err(|source| RecordError::Io {
            what: "creating",
            path: d.clone(),
            source,
        })?;
    for p in [state, d.as_path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o700)).map_err(|source| {
            RecordError::Io {
                what: "restricting",
                path: p.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(d)
}

/// Writes a record atomically.
pub fn write(dir: &Path, r: &Record) -> Result<()> {
    let path = dir.join(format!("{}.json", r.id));
    let tmp = dir.join(format!(".{}.tmp", r.id));
    let data = serde_json::to_vec(r).unwrap_or_default();
    fs::write(&tmp, data)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|source| RecordError::Io {
            what: "writing",
            path,
            source,
        })
}

/// Removes a record (a missing one is fine).
pub fn remove(dir: &Path, id: &str) -> Result<()> {
    let path = dir.join(format!("{id}.json"));
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RecordError::Io {
            what: "removing",
            path,
            source,
        }),
    }
}

/// Every readable record; unreadable files are returned by name so the
/// caller can report and remove them.
pub fn load_all(dir: &Path) -> (Vec<Record>, Vec<PathBuf>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return (ok, bad);
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            bad.push(p);
            continue;
        }
        match fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        {
            Some(r) => ok.push(r),
            None => bad.push(p),
        }
    }
    (ok, bad)
}
