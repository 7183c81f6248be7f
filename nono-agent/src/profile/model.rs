//! What a resolved profile says, in the shapes `plan` hands to the
//! enforcers: network, filesystem and process parts.

use std::path::PathBuf;

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
    /// Where the filesystem rules and `loopback` were written (for `why`
    /// and `exec --dry-run`; domain and CIDR rules carry their own origin).
    pub origins: Provenance,
}

/// Which right a filesystem rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FsAccess {
    /// `read = [...]`.
    Read,
    /// `write = [...]`.
    Write,
    /// `exec = [...]`.
    Exec,
}

impl FsAccess {
    /// `read`, `write` or `exec`, as in the profile and the flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Exec => "exec",
        }
    }
}

/// Where a profile's rules without an origin of their own were written:
/// each filesystem rule (the first file that wrote it, as merging keeps the
/// first) and the `loopback` setting in force (the last file that set it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// Rule kind, expanded path, where.
    pub fs: Vec<(FsAccess, PathBuf, super::Location)>,
    /// The `loopback = ...` in force.
    pub loopback: Option<super::Location>,
}

impl Provenance {
    /// Where the `access` rule on `path` was written, if in a profile.
    pub fn fs_rule(&self, access: FsAccess, path: &std::path::Path) -> Option<&super::Location> {
        self.fs
            .iter()
            .find(|(a, p, _)| *a == access && p == path)
            .map(|(_, _, at)| at)
    }
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
    /// Transparent mode (`transparent = true`): connects the policy refuses
    /// go to the proxy, which decides by name, and DNS to the agent's
    /// resolver.
    pub transparent: bool,
    /// Names resolved without DNS.
    pub resolve: Vec<Pin>,
    /// Daemon sockets (docker.sock, ...) the command may connect to.
    pub allow_unix_sockets: Vec<PathBuf>,
    /// Credentials the proxy injects (`[[credentials]]`), with where each
    /// was written.
    pub credentials: Vec<(nono_proxy::mitm::CredentialSpec, super::Location)>,
    /// Extra trusted CA certificates for credential hosts (PEM file).
    pub upstream_ca: Option<PathBuf>,
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
