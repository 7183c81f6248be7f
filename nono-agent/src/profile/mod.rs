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
mod expand;
mod raw;
mod render;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use nono_proxy::{CidrRule, DomainRule, Pin, Upstream};

/// A profile with its `extends` chain applied and every variable expanded:
/// what the enforcers are given.
#[derive(Debug, Clone)]
pub struct ResolvedProfile {
    /// The name it was asked for by (or the file stem for a path).
    pub name: String,
    /// The `extends` chain, base first, each as `NAME (SOURCE)`.
    pub chain: Vec<String>,
    /// The most derived `description`.
    pub description: Option<String>,
    /// What the proxy and the kernel network layer allow.
    pub network: NetworkPolicy,
    /// What Landlock allows.
    pub filesystem: FsPolicy,
    /// How the command is started.
    pub process: ProcessPolicy,
}

/// Network part of a profile.
#[derive(Debug, Clone)]
pub struct NetworkPolicy {
    /// Hosts the proxy lets through.
    pub allow_domains: Vec<DomainRule>,
    /// Hosts the proxy refuses even if allowed (from every level).
    pub deny_domains: Vec<DomainRule>,
    /// IP ranges the proxy lets through.
    pub allow_cidrs: Vec<CidrRule>,
    /// Which loopback ports the command may connect to.
    pub loopback: Loopback,
    /// Chain the proxy to this one.
    pub upstream_proxy: Option<Upstream>,
    /// Names resolved without DNS.
    pub resolve: Vec<Pin>,
    /// Daemon sockets (docker.sock, ...) the command may connect to.
    pub allow_unix_sockets: Vec<PathBuf>,
}

/// Loopback ports reachable from the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loopback {
    /// Every port (test containers, local databases ...).
    Any,
    /// Only these (the proxy's own port is added by the agent).
    Ports(Vec<u16>),
}

/// Filesystem part of a profile: absolute paths, variables expanded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsPolicy {
    /// Readable beneath.
    pub read: Vec<PathBuf>,
    /// Every right beneath (read, write, create, remove, execute).
    pub write: Vec<PathBuf>,
    /// Readable and executable beneath.
    pub exec: Vec<PathBuf>,
}

/// Which environment variables the command gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvPolicy {
    /// All of the agent's.
    Inherit,
    /// None (the agent supplies a minimal PATH).
    Clean,
    /// Only these names.
    PassThrough(Vec<String>),
}

/// Process part of a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPolicy {
    /// Environment handling.
    pub env: EnvPolicy,
    /// Run the command as this user (name or numeric uid).
    pub user: Option<String>,
}

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

/// A place in a profile file, 1-based, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (`builtin:NAME.toml` for built-ins).
    pub file: String,
    /// Line.
    pub line: usize,
    /// Column, in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Neither a file nor a built-in of that name exists.
    #[error(
        "{from}profile {spec:?} not found (looked in: {looked})",
        from = .from.as_ref().map(|l| format!("{l}: ")).unwrap_or_default(),
        looked = .looked.join(", ")
    )]
    NotFound {
        /// The name or path asked for.
        spec: String,
        /// Every place tried, in order.
        looked: Vec<String>,
        /// The `extends` that asked for it, if any.
        from: Option<Location>,
    },
    /// The file exists but could not be read.
    #[error("reading profile {}: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// TOML syntax, unknown key, wrong type or a value that does not parse.
    #[error("{at}: {message}")]
    Invalid {
        /// Where.
        at: Location,
        /// What.
        message: String,
    },
    /// As `Invalid`, when the parser could not say where.
    #[error("{file}: {message}")]
    InvalidFile {
        /// The file.
        file: String,
        /// What.
        message: String,
    },
    /// `$NAME` other than `$CWD`, `$HOME`, `$TMPDIR`.
    #[error("{at}: unknown variable ${name} (known: $CWD, $HOME, $TMPDIR; $$ for a literal $)")]
    UnknownVariable {
        /// Where.
        at: Location,
        /// The variable.
        name: String,
    },
    /// A known variable with no value here (`$HOME` unset, cwd deleted).
    #[error("{at}: ${name} has no value here")]
    UnsetVariable {
        /// Where.
        at: Location,
        /// The variable.
        name: String,
    },
    /// A path that is not absolute after expansion: it would depend on
    /// wherever the agent happens to run.
    #[error("{at}: {path:?} is not an absolute path (after expansion: {expanded:?})")]
    RelativePath {
        /// Where.
        at: Location,
        /// As written.
        path: String,
        /// After expansion.
        expanded: String,
    },
    /// Profiles extending each other.
    #[error("profiles extend each other in a cycle: {}", .chain.join(" -> "))]
    Cycle {
        /// The chain, from the profile asked for to the repeated one.
        chain: Vec<String>,
    },
    /// A name that cannot be a file name.
    #[error("{from}invalid profile name {name:?}", from = .from.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    BadName {
        /// The name.
        name: String,
        /// The `extends` that used it, if any.
        from: Option<Location>,
    },
    /// The file, or a directory on its path, could be changed by someone
    /// else than root and the user running nono-agent: whoever can write it
    /// decides the next sandbox's policy.
    #[error("refusing profile {}: {why}", .file.display())]
    Unsafe {
        /// The file.
        file: PathBuf,
        /// Which path and why.
        why: String,
    },
}

/// Loads the profile `spec` (a NAME or a PATH, see the module docs) with its
/// `extends` chain applied.
pub fn load(spec: &str, ctx: &ExpandContext) -> Result<ResolvedProfile, ProfileError> {
    load_in(spec, ctx, &Dirs::new(ctx))
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

/// Lookup directories (separate from [`ExpandContext`] so tests need not
/// depend on the real `/etc`).
#[derive(Debug, Clone)]
struct Dirs {
    user: Option<PathBuf>,
    system: PathBuf,
}

impl Dirs {
    fn new(ctx: &ExpandContext) -> Self {
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
enum Tier {
    User,
    System,
    Builtin,
}

/// A profile source found and read, not yet parsed.
#[derive(Debug)]
struct Found {
    /// `ResolvedProfile::name` / the chain's label.
    name: String,
    /// For messages (`Location::file`).
    file: String,
    /// The identity used to detect cycles.
    key: String,
    text: String,
    /// Directory for relative `extends` paths (none for built-ins).
    dir: Option<PathBuf>,
    /// Set when found by name: a profile extending its own name continues
    /// the lookup after this tier (so a user's `claude-code` can extend the
    /// built-in `claude-code`).
    tier: Option<Tier>,
}

impl Found {
    fn label(&self) -> String {
        format!("{} ({})", self.name, self.file)
    }
}

fn is_path_spec(spec: &str) -> bool {
    spec.contains('/') || spec.ends_with(".toml")
}

fn load_in(spec: &str, ctx: &ExpandContext, dirs: &Dirs) -> Result<ResolvedProfile, ProfileError> {
    let start = if is_path_spec(spec) {
        locate_path(Path::new(spec), &ctx.cwd, None)?
    } else {
        locate_name(spec, dirs, Tier::User, None)?
    };
    resolve_chain(start, ctx, dirs)
}

fn read_file(path: &Path) -> Result<Option<String>, ProfileError> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if let Some(why) = unsafe_path(path, me) {
                return Err(ProfileError::Unsafe {
                    file: path.to_path_buf(),
                    why,
                });
            }
            Ok(Some(t))
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
fn unsafe_path(path: &Path, me: u32) -> Option<String> {
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

fn locate_path(path: &Path, base: &Path, from: Option<Location>) -> Result<Found, ProfileError> {
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
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0'])
}

fn locate_name(
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
                "(no user profile directory: neither $XDG_CONFIG_HOME nor $HOME is set)".into(),
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

/// Follows `extends` from `start` to the base, then merges base first.
fn resolve_chain(
    start: Found,
    ctx: &ExpandContext,
    dirs: &Dirs,
) -> Result<ResolvedProfile, ProfileError> {
    let name = start.name.clone();
    let mut layers: Vec<(String, raw::Layer)> = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut current = start;
    loop {
        if seen.iter().any(|(k, _)| *k == current.key) {
            let mut chain: Vec<String> = seen.into_iter().map(|(_, l)| l).collect();
            chain.push(current.label());
            return Err(ProfileError::Cycle { chain });
        }
        seen.push((current.key.clone(), current.label()));
        let layer = raw::parse(&current.text, &current.file, ctx)?;
        let next = match &layer.extends {
            None => None,
            Some((spec, at)) => Some(if is_path_spec(spec) {
                match &current.dir {
                    Some(dir) => locate_path(Path::new(spec), dir, Some(at.clone()))?,
                    // A built-in has no directory to be relative to.
                    None => locate_path(Path::new(spec), Path::new("/"), Some(at.clone()))?,
                }
            } else {
                let first = match current.tier {
                    Some(Tier::User) if *spec == current.name => Tier::System,
                    Some(Tier::System) if *spec == current.name => Tier::Builtin,
                    _ => Tier::User,
                };
                if current.tier == Some(Tier::Builtin) && *spec == current.name {
                    // Nothing after the built-ins: report it as the cycle it is.
                    let mut chain: Vec<String> = seen.into_iter().map(|(_, l)| l).collect();
                    chain.push(current.label());
                    return Err(ProfileError::Cycle { chain });
                }
                locate_name(spec, dirs, first, Some(at.clone()))?
            }),
        };
        layers.push((current.label(), layer));
        match next {
            Some(n) => current = n,
            None => break,
        }
    }
    layers.reverse();
    let mut merged = Merged::default();
    let mut chain = Vec::new();
    for (label, layer) in layers {
        merge(&mut merged, layer);
        chain.push(label);
    }
    Ok(ResolvedProfile {
        name,
        chain,
        description: merged.description,
        network: NetworkPolicy {
            allow_domains: merged.allow_domains,
            deny_domains: merged.deny_domains,
            allow_cidrs: merged.allow_cidrs,
            loopback: merged.loopback.unwrap_or(Loopback::Any),
            upstream_proxy: merged.upstream_proxy,
            resolve: merged.resolve,
            allow_unix_sockets: merged.allow_unix_sockets,
        },
        filesystem: merged.fs,
        process: ProcessPolicy {
            env: merged.env.unwrap_or(EnvPolicy::Inherit),
            user: merged.user,
        },
    })
}

/// The accumulated result of merging layers, base first.
#[derive(Debug, Default)]
struct Merged {
    description: Option<String>,
    allow_domains: Vec<DomainRule>,
    deny_domains: Vec<DomainRule>,
    allow_cidrs: Vec<CidrRule>,
    loopback: Option<Loopback>,
    upstream_proxy: Option<Upstream>,
    resolve: Vec<Pin>,
    allow_unix_sockets: Vec<PathBuf>,
    fs: FsPolicy,
    env: Option<EnvPolicy>,
    user: Option<String>,
}

/// Appends the items not already present (by `same`), keeping the first
/// occurrence's position: parents come first in the result.
fn append_unique<T>(into: &mut Vec<T>, items: Vec<T>, same: impl Fn(&T, &T) -> bool) {
    for item in items {
        if !into.iter().any(|x| same(x, &item)) {
            into.push(item);
        }
    }
}

/// Merges one layer (a child) over what its parents produced.
///
/// - Lists append, parent first, duplicates removed. Domain rules are the
///   same when they match the same hosts and ports (`Example.com` and
///   `example.com`), CIDR rules when network and port are equal, paths when
///   equal after normalisation.
/// - Pins (`resolve`) are keyed by name: a child's pin for a name replaces
///   the parent's, since one name cannot be pinned to two address sets.
/// - Scalars (`description`, `loopback`, `upstream_proxy`, `env`, `user`)
///   are replaced when the child sets them; a child can thus also widen
///   `loopback` back to `"any"`.
/// - `deny_domains` of every level are kept; the proxy checks them before
///   any allow rule, so deny wins whichever level allowed the host.
fn merge(m: &mut Merged, l: raw::Layer) {
    let same_domain = |a: &DomainRule, b: &DomainRule| a.host == b.host && a.port == b.port;
    append_unique(&mut m.allow_domains, l.allow_domains, same_domain);
    append_unique(&mut m.deny_domains, l.deny_domains, same_domain);
    append_unique(&mut m.allow_cidrs, l.allow_cidrs, |a, b| {
        a.net == b.net && a.port == b.port
    });
    for pin in l.resolve {
        m.resolve.retain(|p| p.name != pin.name);
        m.resolve.push(pin);
    }
    append_unique(
        &mut m.allow_unix_sockets,
        l.allow_unix_sockets,
        PartialEq::eq,
    );
    append_unique(&mut m.fs.read, l.fs.read, PartialEq::eq);
    append_unique(&mut m.fs.write, l.fs.write, PartialEq::eq);
    append_unique(&mut m.fs.exec, l.fs.exec, PartialEq::eq);
    if l.description.is_some() {
        m.description = l.description;
    }
    if l.loopback.is_some() {
        m.loopback = l.loopback;
    }
    if l.upstream_proxy.is_some() {
        m.upstream_proxy = l.upstream_proxy;
    }
    if l.env.is_some() {
        m.env = l.env;
    }
    if l.user.is_some() {
        m.user = l.user;
    }
}

fn list_in(ctx: &ExpandContext, dirs: &Dirs) -> Vec<ProfileInfo> {
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
fn toml_files(dir: &Path) -> Vec<(String, PathBuf)> {
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
