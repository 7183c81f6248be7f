//! Sandbox profiles: named, layered TOML descriptions of what a sandbox may
//! reach (network), touch (filesystem) and inherit (process).
//!
//! A profile is looked up by NAME in `$XDG_CONFIG_HOME/nono-agent/profiles`,
//! then `/etc/nono-agent/profiles`, then the built-ins compiled into the
//! binary (from the repository's `profiles/` directory), so that a user can
//! shadow a built-in without touching the system. A spec with a `/` or
//! ending in `.toml` is a PATH instead.
//!
//! `extends` layers profiles; the merge rules (see [`merge`] and
//! `profiles/README.md`) are chosen so that a child can only add to what it
//! inherits, except for the scalars it explicitly overrides:
//!
//! - lists append, parent first, duplicates removed;
//! - scalars (`description`, `loopback`, `upstream_proxy`, `env`, `user`)
//!   are replaced by the child's value when the child sets one;
//! - deny rules from every level are kept, and the proxy evaluates them
//!   before any allow rule, so a child cannot re-allow what a parent denied.
//!
//! Every error names the file, and where the TOML parser gives a span, the
//! line and column, because profiles are edited by hand and a bare "invalid
//! pattern" in a layered configuration is not actionable.

mod builtin;
mod error;
mod expand;
mod lookup;
mod merge;
mod model;
mod raw;
mod render;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use error::{Location, ProfileError};
pub use expand::ExpandContext;
pub use lookup::{shadowed_builtin, ProfileInfo, ProfileSource};
pub use model::{
    EnvPolicy, FsAccess, FsPolicy, Loopback, NetworkPolicy, ProcessPolicy, Provenance,
    ResolvedProfile,
};

pub(crate) use lookup::{is_path_spec, unsafe_path};
pub(crate) use raw::{location, toml_error, utf8_text, Parsed};

use lookup::{list_in, load_in, locate_path, Dirs};
use merge::resolve_chain;

/// Loads the profile `spec` (a NAME or a PATH, see the module docs) with its
/// `extends` chain applied.
pub fn load(spec: &str, ctx: &ExpandContext) -> Result<ResolvedProfile, ProfileError> {
    load_in(spec, ctx, &Dirs::new(ctx))
}

/// As [`load`], without the user tier: the NAME (and every `extends` by
/// name) is looked up in `/etc/nono-agent/profiles` and the built-ins only.
/// Used when the host configuration restricts which profiles an
/// unprivileged user may name, so that a user's own file of an allowed name
/// does not stand in for the administrator's.
pub fn load_system(spec: &str, ctx: &ExpandContext) -> Result<ResolvedProfile, ProfileError> {
    let dirs = Dirs {
        user: None,
        ..Dirs::new(ctx)
    };
    load_in(spec, ctx, &dirs)
}

/// Checks a profile file (whatever its name looks like) by loading it.
pub fn validate_file(path: &Path, ctx: &ExpandContext) -> Result<ResolvedProfile, ProfileError> {
    let dirs = Dirs::new(ctx);
    let start = locate_path(path, &ctx.cwd, None)?;
    resolve_chain(start, ctx, &dirs)
}

/// Every profile `--profile NAME` can name, sorted by name, each with the
/// source that wins and the ones it shadows.
pub fn list(ctx: &ExpandContext) -> Vec<ProfileInfo> {
    list_in(ctx, &Dirs::new(ctx))
}
