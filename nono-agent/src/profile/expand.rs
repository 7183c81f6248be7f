//! Variables in profile paths: `$CWD`, `$HOME`, `$TMPDIR`, also as
//! `${NAME}`; `$$` is a literal `$`.
//!
//! Only these three are known, on purpose: a profile grants access, and
//! letting any environment variable steer a grant (`$EDITOR_DIR`,
//! `$SOME_UNSET`) would make a profile mean different things on different
//! machines, or `/` when a variable is empty. An unknown or unset variable is
//! an error, and so is a result that is not absolute.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{Location, ProfileError};

/// The values `$CWD`, `$HOME` and `$TMPDIR` expand to, and where user
/// profiles live. Explicit rather than read from the environment at each
/// use so that tests (and a future `--user` that changes `$HOME`) can say
/// exactly what a profile means.
#[derive(Debug, Clone)]
pub struct ExpandContext {
    /// `$CWD`. Empty means unknown: `$CWD` is then an error rather than a
    /// guess (a wrong guess could grant write access to the wrong tree).
    pub cwd: PathBuf,
    /// `$HOME`; `None` makes `$HOME` an error.
    pub home: Option<PathBuf>,
    /// `$TMPDIR`.
    pub tmpdir: PathBuf,
    /// `$XDG_CONFIG_HOME`; `None` means `$HOME/.config`.
    pub xdg_config_home: Option<PathBuf>,
}

impl ExpandContext {
    /// From the process: the current directory, `$HOME` (or the passwd
    /// entry of the real uid when unset), `$TMPDIR` (default `/tmp`) and
    /// `$XDG_CONFIG_HOME` (ignored unless absolute, as the XDG spec says).
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let home = var("HOME").or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        });
        Self {
            cwd: std::env::current_dir().unwrap_or_default(),
            home,
            tmpdir: var("TMPDIR").unwrap_or_else(|| PathBuf::from("/tmp")),
            xdg_config_home: var("XDG_CONFIG_HOME").filter(|p| p.is_absolute()),
        }
    }
}

/// Expands `raw` and normalises it lexically (no `.` components, no
/// repeated or trailing `/`; symlinks and `..` are left to the kernel).
/// `at` locates `raw` for errors.
pub(super) fn path(
    raw: &str,
    ctx: &ExpandContext,
    at: impl Fn() -> Location,
) -> Result<PathBuf, ProfileError> {
    let mut out = OsString::new();
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(t) = after.strip_prefix('$') {
            out.push("$");
            rest = t;
            continue;
        } else if let Some(t) = after.strip_prefix('{') {
            let Some(end) = t.find('}') else {
                return Err(ProfileError::Invalid {
                    at: at(),
                    message: format!("{raw:?}: unterminated ${{"),
                });
            };
            (&t[..end], &t[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(ProfileError::Invalid {
                at: at(),
                message: format!(
                    "{raw:?}: '$' must start a variable ($CWD, $HOME, $TMPDIR) or be written $$"
                ),
            });
        }
        out.push(value(name, ctx).ok_or_else(|| unknown_or_unset(name, at()))?);
        rest = tail;
    }
    out.push(rest);
    let expanded = PathBuf::from(out);
    if !expanded.is_absolute() {
        return Err(ProfileError::RelativePath {
            at: at(),
            path: raw.to_string(),
            expanded: expanded.display().to_string(),
        });
    }
    Ok(expanded.components().collect())
}

fn value<'a>(name: &str, ctx: &'a ExpandContext) -> Option<&'a Path> {
    let v = match name {
        "CWD" => &ctx.cwd,
        "HOME" => ctx.home.as_ref()?,
        "TMPDIR" => &ctx.tmpdir,
        _ => return None,
    };
    (!v.as_os_str().is_empty()).then_some(v.as_path())
}

fn unknown_or_unset(name: &str, at: Location) -> ProfileError {
    match name {
        "CWD" | "HOME" | "TMPDIR" => ProfileError::UnsetVariable {
            at,
            name: name.to_string(),
        },
        _ => ProfileError::UnknownVariable {
            at,
            name: name.to_string(),
        },
    }
}
