//! Finding profiles: by NAME in the user, system and built-in tiers, or by
//! PATH; refusing files others could plant; listing what can be named.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::merge::resolve_chain;
use super::*;

/// Where a listed profile comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// Compiled into the binary.
    Builtin,
    /// `$XDG_CONFIG_HOME/nono-agent/profiles/NAME.toml`.
    User(PathBuf),
    /// `/etc/nono-agent/profiles/NAME.toml`.
    System(PathBuf),
}

impl fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin => f.write_str("built-in"),
            Self::User(p) => write!(f, "user {}", p.display()),
            Self::System(p) => write!(f, "system {}", p.display()),
        }
    }
}

/// One entry of [`list`].
#[derive(Debug, Clone)]
pub struct ProfileInfo {
    /// What `--profile` takes.
    pub name: String,
    /// The file `--profile NAME` uses.
    pub source: ProfileSource,
    /// Its own `description` (not inherited).
    pub description: Option<String>,
    /// Profiles of the same name that this one hides, in lookup order.
    pub shadows: Vec<ProfileSource>,
    /// Why `--profile NAME` would fail, if it would.
    pub error: Option<String>,
}

/// One line for `profile list`: name, source, what it shadows, description,
/// and the error if it would not load.
impl fmt::Display for ProfileInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<16} {}", self.name, self.source)?;
        if !self.shadows.is_empty() {
            let s: Vec<String> = self.shadows.iter().map(ToString::to_string).collect();
            write!(f, " (shadows {})", s.join(", "))?;
        }
        if let Some(d) = &self.description {
            write!(f, ": {d}")?;
        }
        if let Some(e) = &self.error {
            write!(f, " [INVALID: {e}]")?;
        }
        Ok(())
    }
}

/// Lookup directories (separate from [`ExpandContext`] so tests need not
/// depend on the real `/etc`).
#[derive(Debug, Clone)]
pub(super) struct Dirs {
    pub(super) user: Option<PathBuf>,
    pub(super) system: PathBuf,
}

impl Dirs {
    pub(super) fn new(ctx: &ExpandContext) -> Self {
        let config = ctx
            .xdg_config_home
            .clone()
            .or_else(|| ctx.home.as_ref().map(|h| h.join(".config")));
        Self {
            user: config.map(|c| c.join("nono-agent").join("profiles")),
            system: PathBuf::from("/etc/nono-agent/profiles"),
        }
    }
}

/// Lookup tiers, in order; a NAME is taken from the first that has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Tier {
    User,
    System,
    Builtin,
}

/// A profile source found and read, not yet parsed.
#[derive(Debug)]
pub(super) struct Found {
    /// `ResolvedProfile::name` / the chain's label.
    pub(super) name: String,
    /// For messages (`Location::file`).
    pub(super) file: String,
    /// The identity used to detect cycles.
    pub(super) key: String,
    pub(super) text: String,
    /// Directory for relative `extends` paths (none for built-ins).
    pub(super) dir: Option<PathBuf>,
    /// Set when found by name: a profile extending its own name continues
    /// the lookup after this tier (so a user's `claude-code` can extend the
    /// built-in `claude-code`).
    pub(super) tier: Option<Tier>,
}

impl Found {
    pub(super) fn label(&self) -> String {
        format!("{} ({})", self.name, self.file)
    }
}

pub(crate) fn is_path_spec(spec: &str) -> bool {
    spec.contains('/') || spec.ends_with(".toml")
}

pub(super) fn load_in(
    spec: &str,
    ctx: &ExpandContext,
    dirs: &Dirs,
) -> Result<ResolvedProfile, ProfileError> {
    let start = if is_path_spec(spec) {
        locate_path(Path::new(spec), &ctx.cwd, None)?
    } else {
        locate_name(spec, dirs, Tier::User, None)?
    };
    resolve_chain(start, ctx, dirs)
}

pub(super) fn read_file(path: &Path) -> Result<Option<String>, ProfileError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if let Some(why) = unsafe_path(path, me) {
                return Err(ProfileError::Unsafe {
                    file: path.to_path_buf(),
                    why,
                });
            }
            Ok(Some(raw::utf8_text(bytes, &path.display().to_string())?))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ProfileError::Read {
            file: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Why a profile file could be planted or changed by someone else, if it
/// could: the file and every directory above it (symlinks resolved) must
/// belong to root or to `me`, the file must not be group- or
/// world-writable, and a directory must not be world-writable unless it is
/// sticky (as `/tmp` is: others cannot replace what they do not own there).
pub(crate) fn unsafe_path(path: &Path, me: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let real = std::fs::canonicalize(path).ok()?;
    let owner_ok = |uid: u32| uid == 0 || uid == me;
    let m = std::fs::metadata(&real).ok()?;
    if !owner_ok(m.uid()) {
        return Some(format!("{} belongs to uid {}", real.display(), m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Some(format!(
            "{} is writable by others (mode {:o})",
            real.display(),
            m.mode() & 0o7777
        ));
    }
    for dir in real.ancestors().skip(1) {
        let Ok(d) = std::fs::metadata(dir) else {
            continue;
        };
        if !owner_ok(d.uid()) {
            return Some(format!(
                "directory {} belongs to uid {}",
                dir.display(),
                d.uid()
            ));
        }
        if d.mode() & 0o002 != 0 && d.mode() & 0o1000 == 0 {
            return Some(format!(
                "directory {} is writable by everyone (mode {:o})",
                dir.display(),
                d.mode() & 0o7777
            ));
        }
    }
    None
}

/// A built-in profile of this name exists but a user or system file of the
/// same name is used instead (worth a warning: such a file may have been
/// planted by an earlier sandbox).
pub fn shadowed_builtin(p: &ResolvedProfile) -> Option<String> {
    let top = p.chain.last()?;
    if builtin::get(&p.name).is_some() && !top.contains("builtin:") {
        Some(top.clone())
    } else {
        None
    }
}

pub(super) fn locate_path(
    path: &Path,
    base: &Path,
    from: Option<Location>,
) -> Result<Found, ProfileError> {
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let Some(text) = read_file(&full)? else {
        return Err(ProfileError::NotFound {
            spec: path.display().to_string(),
            looked: vec![full.display().to_string()],
            from,
        });
    };
    let name = full
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let key = std::fs::canonicalize(&full).unwrap_or_else(|_| full.clone());
    Ok(Found {
        name,
        file: full.display().to_string(),
        key: key.display().to_string(),
        text,
        dir: full.parent().map(Path::to_path_buf),
        tier: None,
    })
}

/// Names are file stems: no path separators, no hidden files, no NUL.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0'])
}

pub(super) fn locate_name(
    name: &str,
    dirs: &Dirs,
    first: Tier,
    from: Option<Location>,
) -> Result<Found, ProfileError> {
    if !valid_name(name) {
        return Err(ProfileError::BadName {
            name: name.to_string(),
            from,
        });
    }
    let file_name = format!("{name}.toml");
    let mut looked = Vec::new();
    let dir_tiers = [
        (Tier::User, dirs.user.as_ref()),
        (Tier::System, Some(&dirs.system)),
    ];
    for (tier, dir) in dir_tiers {
        if tier < first {
            continue;
        }
        let Some(dir) = dir else {
            looked.push(
                "(no user profile directory: neither $XDG_CONFIG_HOME nor $HOME is set, or the host configuration's [profiles] allowed applies)".into(),
            );
            continue;
        };
        let path = dir.join(&file_name);
        if let Some(text) = read_file(&path)? {
            return Ok(Found {
                name: name.to_string(),
                file: path.display().to_string(),
                key: std::fs::canonicalize(&path)
                    .unwrap_or_else(|_| path.clone())
                    .display()
                    .to_string(),
                text,
                dir: Some(dir.clone()),
                tier: Some(tier),
            });
        }
        looked.push(path.display().to_string());
    }
    if let Some(text) = builtin::get(name) {
        return Ok(Found {
            name: name.to_string(),
            file: format!("builtin:{file_name}"),
            key: format!("builtin:{name}"),
            text: text.to_string(),
            dir: None,
            tier: Some(Tier::Builtin),
        });
    }
    looked.push(format!(
        "built-in profiles ({})",
        builtin::names().join(", ")
    ));
    Err(ProfileError::NotFound {
        spec: name.to_string(),
        looked,
        from,
    })
}

pub(super) fn list_in(ctx: &ExpandContext, dirs: &Dirs) -> Vec<ProfileInfo> {
    // Each name with its sources in lookup order (and each file's text).
    type Sources = Vec<(ProfileSource, Option<String>)>;
    let mut found: Vec<(String, Sources)> = Vec::new();
    let mut add = |name: String, source: ProfileSource, text: Option<String>| match found
        .iter_mut()
        .find(|(n, _)| *n == name)
    {
        Some((_, v)) => v.push((source, text)),
        None => found.push((name, vec![(source, text)])),
    };
    let dir_tiers = [
        (
            dirs.user.as_ref(),
            ProfileSource::User as fn(PathBuf) -> ProfileSource,
        ),
        (Some(&dirs.system), ProfileSource::System),
    ];
    for (dir, make) in dir_tiers {
        let Some(dir) = dir else { continue };
        for (name, path) in toml_files(dir) {
            let text = std::fs::read_to_string(&path).ok();
            add(name, make(path), text);
        }
    }
    for name in builtin::names() {
        add(
            name.to_string(),
            ProfileSource::Builtin,
            builtin::get(name).map(str::to_string),
        );
    }
    let mut out: Vec<ProfileInfo> = found
        .into_iter()
        .filter_map(|(name, mut sources)| {
            if sources.is_empty() {
                return None;
            }
            let (source, text) = sources.remove(0);
            let error = load_in(&name, ctx, dirs).err().map(|e| e.to_string());
            Some(ProfileInfo {
                description: text.as_deref().and_then(raw::description),
                shadows: sources.into_iter().map(|(s, _)| s).collect(),
                name,
                source,
                error,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `NAME.toml` files of a directory (unreadable or missing directory: none).
pub(super) fn toml_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = e.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".toml")?
                .to_string();
            (valid_name(&name) && path.is_file()).then_some((name, path))
        })
        .collect();
    v.sort();
    v
}
