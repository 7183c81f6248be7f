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

use super::{ExpandContext, Location, ProfileError};

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
