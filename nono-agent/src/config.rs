//! The host configuration, `/etc/nono-agent/config.toml`: what the machine's
//! administrator decides for every sandbox on it.
//!
//! - `[network] deny_domains`, `deny_cidrs`: refused on top of every
//!   profile and flag (the proxy evaluates deny rules first, so nothing can
//!   re-allow them); events and refusals name `host config FILE:LINE`.
//! - `[network] upstream_proxy`: every sandbox proxy chains to it.
//! - `[profiles] allowed`: the profile names an unprivileged user may give
//!   to `--profile` (looked up in `/etc/nono-agent/profiles` and the
//!   built-ins only); root may name any.
//! - `[events] path`: a file every `exec` also appends its events to.
//! - `[metrics] listen`: a loopback address for the daemon's metrics.
//!
//! The file is parsed like a profile (same error type and span handling:
//! every error names FILE:LINE:COLUMN, unknown keys are errors), and must,
//! like its directory, belong to root and be writable by root only: whoever
//! can write it decides every sandbox's policy. A missing file is an empty
//! configuration; an unreadable, planted or invalid one is an error
//! (`exec` fails closed).

use serde::Deserialize;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use toml::Spanned;

use crate::profile::{location, toml_error, unsafe_path, Location, Parsed, ProfileError};
use nono_proxy::{CidrRule, DomainRule, Origin, Upstream};

/// Where the host configuration lives.
pub const DEFAULT_PATH: &str = "/etc/nono-agent/config.toml";

/// Environment variable naming another file (for tests; the file must pass
/// the same ownership checks).
pub const PATH_ENV: &str = "NONO_AGENT_CONFIG";

/// Why the host configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("reading host config {}: {source}", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Someone other than root could change it.
    #[error(
        "refusing host config {}: {why} (the file and its directory must belong to root and be writable by root only)",
        .file.display()
    )]
    Unsafe {
        /// The file.
        file: PathBuf,
        /// Which path and why.
        why: String,
    },
    /// Syntax, unknown key, wrong type or bad value: `FILE:LINE:COLUMN: ...`.
    #[error(transparent)]
    Invalid(#[from] ProfileError),
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where.
    pub at: Location,
}

/// The host configuration, validated.
#[derive(Debug, Clone, Default)]
pub struct HostConfig {
    /// The file read (`None`: there was none; every value is its default).
    pub file: Option<PathBuf>,
    /// `[network]`.
    pub network: HostNetwork,
    /// `[profiles]`.
    pub profiles: HostProfiles,
    /// `[events]`.
    pub events: HostEvents,
    /// `[metrics]`.
    pub metrics: HostMetrics,
}

/// `[network]`.
#[derive(Debug, Clone, Default)]
pub struct HostNetwork {
    /// Names no sandbox may reach (origin: `host config FILE:LINE`).
    pub deny_domains: Vec<DomainRule>,
    /// Ranges no sandbox may reach (origin: `host config FILE:LINE`).
    pub deny_cidrs: Vec<CidrRule>,
    /// The proxy every sandbox proxy chains to.
    pub upstream_proxy: Option<Sourced<Upstream>>,
}

/// `[profiles]`.
#[derive(Debug, Clone, Default)]
pub struct HostProfiles {
    /// Profile names unprivileged users may name (`None`: any).
    pub allowed: Option<Sourced<Vec<String>>>,
}

/// `[events]`.
#[derive(Debug, Clone, Default)]
pub struct HostEvents {
    /// Every `exec` also appends its events here (absolute path).
    pub path: Option<Sourced<PathBuf>>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Default)]
pub struct HostMetrics {
    /// Where the daemon serves metrics (a loopback address; `None`: off).
    pub listen: Option<Sourced<SocketAddr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the configuration to be a table")]
struct RawConfig {
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    profiles: RawProfiles,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "network to be a table")]
struct RawNetwork {
    deny_domains: Vec<Spanned<Parsed<DomainRule>>>,
    deny_cidrs: Vec<Spanned<Parsed<CidrRule>>>,
    upstream_proxy: Option<Spanned<Parsed<Upstream>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "profiles to be a table")]
struct RawProfiles {
    allowed: Option<Spanned<Vec<Parsed<ProfileName>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "events to be a table")]
struct RawEvents {
    path: Option<Spanned<Parsed<AbsolutePath>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "metrics to be a table")]
struct RawMetrics {
    listen: Option<Spanned<Parsed<LoopbackAddr>>>,
}

/// A profile NAME (not a path): what `--profile NAME` looks up.
#[derive(Debug)]
struct ProfileName(String);

impl FromStr for ProfileName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.starts_with('.') || s.contains(['/', '\0']) || s.ends_with(".toml") {
            return Err(format!(
                "{s:?} is not a profile name (a name as `--profile NAME` takes it, not a path)"
            ));
        }
        Ok(Self(s.to_string()))
    }
}

#[derive(Debug)]
struct AbsolutePath(PathBuf);

impl FromStr for AbsolutePath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let p = Path::new(s);
        if !p.is_absolute() || s.contains('\0') {
            return Err(format!("{s:?} is not an absolute path"));
        }
        if s.ends_with('/') {
            return Err(format!("{s:?} is a directory; name the events file"));
        }
        Ok(Self(p.to_path_buf()))
    }
}

#[derive(Debug)]
struct LoopbackAddr(SocketAddr);

impl FromStr for LoopbackAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let a: SocketAddr = s.parse().map_err(|_| {
            format!("{s:?} is not an address and port (\"127.0.0.1:9464\", \"[::1]:9464\")")
        })?;
        if !a.ip().is_loopback() {
            return Err(format!(
                "{s:?}: metrics may only listen on a loopback address (127.0.0.0/8 or ::1)"
            ));
        }
        if a.port() == 0 {
            return Err(format!("{s:?}: port 0 is not a port to listen on"));
        }
        Ok(Self(a))
    }
}

/// Parses and validates the text of a host configuration; `file` names it
/// in errors and origins.
pub fn parse(text: &str, file: &str) -> Result<HostConfig, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, file, &e))?;
    let at = |span: std::ops::Range<usize>| location(text, file, span.start);
    let host = |span: std::ops::Range<usize>| Origin::HostConfig {
        file: file.to_string(),
        line: location(text, file, span.start).line,
    };
    let n = raw.network;
    Ok(HostConfig {
        file: Some(PathBuf::from(file)),
        network: HostNetwork {
            deny_domains: n
                .deny_domains
                .into_iter()
                .map(|s| {
                    let o = host(s.span());
                    s.into_inner().0.with_origin(o)
                })
                .collect(),
            deny_cidrs: n
                .deny_cidrs
                .into_iter()
                .map(|s| {
                    let o = host(s.span());
                    s.into_inner().0.with_origin(o)
                })
                .collect(),
            upstream_proxy: n.upstream_proxy.map(|s| Sourced {
                at: at(s.span()),
                value: s.into_inner().0,
            }),
        },
        profiles: HostProfiles {
            allowed: raw.profiles.allowed.map(|s| {
                let at = at(s.span());
                let mut names: Vec<String> = Vec::new();
                for Parsed(ProfileName(n)) in s.into_inner() {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                Sourced { value: names, at }
            }),
        },
        events: HostEvents {
            path: raw.events.path.map(|s| Sourced {
                at: at(s.span()),
                value: s.into_inner().0 .0,
            }),
        },
        metrics: HostMetrics {
            listen: raw.metrics.listen.map(|s| Sourced {
                at: at(s.span()),
                value: s.into_inner().0 .0,
            }),
        },
    })
}

/// The file to read: `$NONO_AGENT_CONFIG` if set, else [`DEFAULT_PATH`].
///
/// A user other than root may not trade the host's file for another (an
/// empty root-owned file would drop every host denial and the profile
/// allowlist): for them the variable counts only on a host that has no
/// configuration file, where it can only add restrictions.
pub fn path_from_env() -> PathBuf {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let host_has_file = std::fs::symlink_metadata(DEFAULT_PATH).is_ok();
    let (path, ignored) = choose_path(std::env::var_os(PATH_ENV), root, host_has_file);
    if ignored {
        eprintln!(
            "nono-agent: ignoring {PATH_ENV}: this host has {DEFAULT_PATH}, which only root may replace"
        );
    }
    path
}

/// The pure part of [`path_from_env`]: the path, and whether the variable
/// was ignored.
fn choose_path(
    env: Option<std::ffi::OsString>,
    root: bool,
    host_has_file: bool,
) -> (PathBuf, bool) {
    match env.filter(|v| !v.is_empty()) {
        None => (PathBuf::from(DEFAULT_PATH), false),
        Some(_) if !root && host_has_file => (PathBuf::from(DEFAULT_PATH), true),
        Some(v) => (PathBuf::from(v), false),
    }
}

#[cfg(test)]
#[test]
fn only_root_may_replace_an_existing_host_configuration() {
    let env = Some(std::ffi::OsString::from("/tmp/mine.toml"));
    let host = PathBuf::from(DEFAULT_PATH);
    assert_eq!(choose_path(env.clone(), false, true), (host.clone(), true));
    assert_eq!(
        choose_path(env.clone(), true, true),
        (PathBuf::from("/tmp/mine.toml"), false)
    );
    assert_eq!(
        choose_path(env, false, false),
        (PathBuf::from("/tmp/mine.toml"), false)
    );
    assert_eq!(choose_path(None, false, true), (host.clone(), false));
    assert_eq!(choose_path(Some("".into()), true, false), (host, false));
}

/// Reads and validates `path`. A missing file is the empty configuration.
pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => crate::profile::utf8_text(bytes, &path.display().to_string())?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HostConfig::default()),
        Err(source) => {
            return Err(ConfigError::Read {
                file: path.to_path_buf(),
                source,
            })
        }
    };
    if let Some(why) = unsafe_config(path) {
        return Err(ConfigError::Unsafe {
            file: path.to_path_buf(),
            why,
        });
    }
    parse(&text, &path.display().to_string())
}

/// Reads the configuration `exec` uses (see [`path_from_env`]).
pub fn load_from_env() -> Result<HostConfig, ConfigError> {
    load(&path_from_env())
}

/// Why the file could be changed by someone other than root, if it could:
/// the profile planting check with root as the only trusted owner, and in
/// addition its own directory must not be group- or world-writable (even
/// sticky: a sticky directory still lets others create a file of a name not
/// yet taken).
fn unsafe_config(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    if let Some(why) = unsafe_path(path, 0) {
        return Some(why);
    }
    let real = std::fs::canonicalize(path).ok()?;
    let dir = real.parent()?;
    let m = std::fs::metadata(dir).ok()?;
    if m.mode() & 0o022 != 0 {
        return Some(format!(
            "directory {} is writable by others (mode {:o})",
            dir.display(),
            m.mode() & 0o7777
        ));
    }
    None
}

/// Why an unprivileged user may not name `spec` with `--profile`, if the
/// configuration restricts profiles.
pub fn profile_refusal(config: &HostConfig, spec: &str, privileged: bool) -> Option<String> {
    let allowed = config.profiles.allowed.as_ref()?;
    if privileged {
        return None;
    }
    let list = if allowed.value.is_empty() {
        "none".to_string()
    } else {
        allowed.value.join(", ")
    };
    if crate::profile::is_path_spec(spec) {
        return Some(format!(
            "--profile {spec:?}: the host configuration ({}) lets unprivileged users name only the \
             profiles it lists ({list}), not profile files; ask an administrator to install the \
             profile in /etc/nono-agent/profiles and add its name to [profiles] allowed",
            allowed.at
        ));
    }
    if !allowed.value.iter().any(|n| n == spec) {
        return Some(format!(
            "--profile {spec:?}: not allowed by the host configuration ({}); unprivileged users \
             may name: {list}",
            allowed.at
        ));
    }
    None
}

/// `config show`: every setting with where its value comes from.
impl fmt::Display for HostConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => writeln!(f, "# host configuration: {}", p.display())?,
            None => writeln!(
                f,
                "# host configuration: no file, every value is its default"
            )?,
        }
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        writeln!(f, "[network]")?;
        if self.network.deny_domains.is_empty() {
            writeln!(f, "deny_domains = []  # default")?;
        } else {
            writeln!(f, "deny_domains = [")?;
            for r in &self.network.deny_domains {
                writeln!(f, "  {},  # {}", quote(&r.text), r.origin)?;
            }
            writeln!(f, "]")?;
        }
        if self.network.deny_cidrs.is_empty() {
            writeln!(f, "deny_cidrs = []  # default")?;
        } else {
            writeln!(f, "deny_cidrs = [")?;
            for r in &self.network.deny_cidrs {
                writeln!(f, "  {},  # {}", quote(&r.text), r.origin)?;
            }
            writeln!(f, "]")?;
        }
        match &self.network.upstream_proxy {
            // The authority only: credentials are not shown.
            Some(u) => writeln!(
                f,
                "upstream_proxy = {}  # {}{}",
                quote(&format!("http://{}", u.value.authority)),
                u.at,
                if u.value.authorization().is_some() {
                    " (credentials not shown)"
                } else {
                    ""
                }
            )?,
            None => writeln!(f, "# upstream_proxy: none (default: direct connections)")?,
        }
        writeln!(f, "\n[profiles]")?;
        match &self.profiles.allowed {
            Some(a) => {
                let names: Vec<String> = a.value.iter().map(|n| quote(n)).collect();
                writeln!(f, "allowed = [{}]  # {}", names.join(", "), a.at)?;
            }
            None => writeln!(
                f,
                "# allowed: any (default: unprivileged users may name any profile)"
            )?,
        }
        writeln!(f, "\n[events]")?;
        match &self.events.path {
            Some(p) => writeln!(
                f,
                "path = {}  # {}",
                quote(&p.value.to_string_lossy()),
                p.at
            )?,
            None => writeln!(f, "# path: none (default: only --events)")?,
        }
        writeln!(f, "\n[metrics]")?;
        match &self.metrics.listen {
            Some(l) => writeln!(f, "listen = {}  # {}", quote(&l.value.to_string()), l.at)?,
            None => writeln!(f, "# listen: none (default: no metrics)")?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
