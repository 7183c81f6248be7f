//! Finding the command before anything is created, so that "not found" and
//! "not executable" get `env`'s exit codes (127 / 126) and leave nothing
//! behind, and so that a failure inside `pre_exec` can be told apart from a
//! bad command.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Why a command cannot be run.
#[derive(Debug, PartialEq, Eq)]
pub enum ResolveError {
    /// No such file (exit 127).
    NotFound(OsString),
    /// Exists but is not an executable file (exit 126).
    NotExecutable(PathBuf),
}

impl ResolveError {
    /// `env`'s exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotFound(_) => 127,
            Self::NotExecutable(_) => 126,
        }
    }
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(c) => write!(f, "{}: command not found", Path::new(c).display()),
            Self::NotExecutable(p) => write!(f, "{}: not an executable file", p.display()),
        }
    }
}

fn executable(p: &Path) -> Option<bool> {
    let m = std::fs::metadata(p).ok()?;
    Some(m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves `cmd` like execvp: a name containing `/` is used as is,
/// otherwise it is searched in `path` (the `PATH` value).
pub fn resolve(cmd: &OsStr, path: Option<&OsStr>) -> Result<PathBuf, ResolveError> {
    if cmd.is_empty() {
        return Err(ResolveError::NotFound(cmd.to_owned()));
    }
    if cmd.as_bytes().contains(&b'/') {
        let p = PathBuf::from(cmd);
        return match executable(&p) {
            Some(true) => Ok(p),
            Some(false) => Err(ResolveError::NotExecutable(p)),
            None => Err(ResolveError::NotFound(cmd.to_owned())),
        };
    }
    let path = path.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let mut first_non_exec = None;
    for dir in std::env::split_paths(path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(cmd);
        match executable(&candidate) {
            Some(true) => return Ok(candidate),
            Some(false) if first_non_exec.is_none() => first_non_exec = Some(candidate),
            _ => {}
        }
    }
    match first_non_exec {
        Some(p) => Err(ResolveError::NotExecutable(p)),
        None => Err(ResolveError::NotFound(cmd.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_in_path() {
        let p = resolve(OsStr::new("sh"), Some(OsStr::new("/nonexistent:/bin"))).unwrap();
        assert_eq!(p, PathBuf::from("/bin/sh"));
    }

    #[test]
    fn missing_is_127_and_non_executable_is_126() {
        let e = resolve(OsStr::new("definitely-not-a-command-xyz"), None).unwrap_err();
        assert_eq!(e.exit_code(), 127);
        let plain = std::env::temp_dir().join(format!("nono-resolve-{}", std::process::id()));
        std::fs::write(&plain, b"data").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve(plain.as_os_str(), None).unwrap_err();
        std::fs::remove_file(&plain).unwrap();
        assert_eq!(e.exit_code(), 126);
        let e = resolve(OsStr::new("/etc"), None).unwrap_err();
        assert_eq!(e.exit_code(), 126);
        let e = resolve(OsStr::new("./nope/nope"), None).unwrap_err();
        assert_eq!(e.exit_code(), 127);
    }
}
