//! What one `exec` will enforce, worked out once before anything is created:
//! the profile (if any) with the command-line flags layered on top, in the
//! shapes the enforcers need.
//!
//! Data flows one way: `cli` (clap) turns the flags into an [`ExecRequest`]
//! (plain data), [`build`] turns that into a [`Plan`], and `commands::exec`
//! carries the plan out. Nothing here knows about clap, and every check the
//! user's input needs happens here, so that bad input is refused before a
//! cgroup, a pin or a proxy exists.

use nono_common::{Dest, Endpoint, Policy, LOOPBACK_ANY, MAX_LOOPBACK_PORTS, MAX_PROXY_ENDPOINTS};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::HostConfig;
use crate::enforcer::Requested;
use crate::profile::{self, EnvPolicy, ExpandContext, Loopback, ProfileError, ResolvedProfile};
use crate::sandbox::landlock::{self, FsRules, LandlockError};
use crate::sandbox::users::{self, Account, UserError};
use nono_proxy::ProxyConfig;

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("profile {spec}")]
    Profile {
        spec: String,
        #[source]
        source: ProfileError,
    },
    #[error("{0}")]
    ProfileNotAllowed(String),
    #[error("--audit: {0}; audit mode is refused on this host")]
    AuditNotAllowed(String),
    #[error("too many --proxy-endpoint values: {0} given, at most {MAX_PROXY_ENDPOINTS}")]
    TooManyEndpoints(usize),
    #[error("--proxy-endpoint {0}: port 0 is not a valid endpoint")]
    EndpointPortZero(SocketAddr),
    #[error("--proxy-endpoint {0}: the unspecified address is not a valid endpoint")]
    EndpointUnspecified(SocketAddr),
    #[error("too many loopback ports: {0} given, at most {MAX_LOOPBACK_PORTS}")]
    TooManyLoopbackPorts(usize),
    #[error(transparent)]
    WriteRule(#[from] LandlockError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Credentials(#[from] crate::creds::CredsError),
    #[error(
        "credential for {host}:{port} ({origin}): the proxy does not allow {host}:{port} ({why}); \
         add an allow rule for it (--allow-domain {host})"
    )]
    CredentialHostNotAllowed {
        host: String,
        port: u16,
        origin: String,
        why: String,
    },
    #[error(
        "--events {path}: that is the command's own {stream}, so events would mix with its output \
         (and the command could write lines that look like events); give a file of its own (--events FILE)"
    )]
    EventsToCommandOutput { path: String, stream: &'static str },
}

/// Everything `exec` was asked for, as plain data (see `cli::ExecArgs`).
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub proxy_endpoints: Vec<SocketAddr>,
    pub enforcer: Requested,
    pub events: Option<PathBuf>,
    pub allow_unenforced: bool,
    pub profile: Option<String>,
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub exec: Vec<PathBuf>,
    pub loopback_ports: Vec<u16>,
    pub allow_unix_sockets: Vec<PathBuf>,
    pub user: Option<String>,
    pub allow_degraded: bool,
    pub quiet: bool,
    /// When denial notices are printed.
    pub notices: crate::cli::Notices,
    /// Print the plan instead of running anything.
    pub dry_run: Option<DryRun>,
    /// Audit mode (`--audit`).
    pub audit: bool,
    /// Transparent mode (`--transparent`; the profile can ask too).
    pub transparent: bool,
    /// The daemon socket to try (`None`: never use the daemon).
    pub daemon_socket: Option<PathBuf>,
    pub proxy: ProxyConfig,
    /// `--credential` flags.
    pub credentials: Vec<nono_proxy::mitm::CredentialSpec>,
    /// `--upstream-ca FILE`.
    pub upstream_ca: Option<PathBuf>,
    /// Do not read the credentials' values (`why`: they decide nothing it
    /// answers, and it must not need the keys).
    pub skip_credential_values: bool,
    pub command: Vec<OsString>,
    /// The host configuration (`crate::config`), already loaded.
    pub host: HostConfig,
}

/// How `exec --dry-run` prints the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    /// Lines for people.
    Text,
    /// One JSON object.
    Json,
}

/// The merged sandbox description.
pub struct Plan {
    /// The command and its arguments (non-empty: clap requires it).
    pub command: Vec<OsString>,
    /// Which enforcer the user asked for.
    pub enforcer: Requested,
    /// Run unconfined if no enforcer applies (the user said so).
    pub allow_unenforced: bool,
    /// Run with what the kernel's Landlock enforces (the user said so).
    pub allow_degraded: bool,
    /// No enforcer line, no summary.
    pub quiet: bool,
    /// When denial notices are printed.
    pub notices: crate::cli::Notices,
    /// Audit mode: the enforcers and the proxy let through what a rule
    /// could allow and record it as would-deny; the filesystem rules are
    /// not applied (the host protection is).
    pub audit: bool,
    /// Transparent mode: refused TCP goes to the proxy's transparent
    /// listener, DNS to the agent's resolver (see `nono_common::redirect`).
    pub transparent: bool,
    /// The daemon socket to try (`None`: never use the daemon).
    pub daemon_socket: Option<PathBuf>,
    /// Where events go (`-` = stdout).
    pub events: Option<PathBuf>,
    /// Where events also go (the host configuration's `[events] path`).
    pub host_events: Option<PathBuf>,
    /// The profile named on the command line, for the start-up line.
    pub profile_name: Option<String>,
    /// What the kernel programs (or the supervisor) allow.
    pub kernel: KernelPolicy,
    /// Proxy rules (profile's, then the flags'); `None`: no proxy.
    pub proxy: Option<ProxyConfig>,
    /// Filesystem rules for Landlock; `None` without a profile or fs flags.
    pub fs: Option<FsRules>,
    /// Environment handling.
    pub env: EnvPolicy,
    /// Run as this user (looked up: a name exists, a uid may be bare).
    pub user: Option<Account>,
    /// Daemon sockets the sandbox may connect to.
    pub allow_unix_sockets: Vec<PathBuf>,
    /// Where the rules without an origin of their own came from.
    pub origins: PlanOrigins,
    /// Credentials the proxy injects, their values read (also in
    /// `proxy.credentials`), and what they change in the environment.
    pub credentials: crate::creds::Resolved,
}

/// Where the plan's filesystem rules and loopback ports came from (domain
/// and CIDR rules carry their own [`nono_proxy::Origin`]), so that `why` and
/// `exec --dry-run` can name the line or flag behind a verdict.
#[derive(Debug, Clone, Default)]
pub struct PlanOrigins {
    /// The profile's filesystem rules and `loopback` setting.
    pub profile: profile::Provenance,
    /// Loopback ports the profile lists (`None`: it does not narrow).
    pub profile_loopback_ports: Option<Vec<u16>>,
    /// Loopback ports `--loopback-port` added.
    pub cli_loopback_ports: Vec<u16>,
    /// Filesystem rules given as flags (`--read`, `--write`, `--exec`).
    pub cli_fs: Vec<(profile::FsAccess, PathBuf)>,
}

/// The kernel-side policy, checked: proxy endpoints and the loopback ports
/// (`None`: every port). The sandbox's own proxy port is added when the
/// proxy has started ([`KernelPolicy::policy`]); room for it is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPolicy {
    endpoints: Vec<SocketAddr>,
    loopback_ports: Option<Vec<u16>>,
}

impl KernelPolicy {
    /// Checks the endpoints and ports; `proxy` says whether a sandbox proxy
    /// will take a loopback port of its own.
    pub fn new(
        endpoints: &[SocketAddr],
        loopback_ports: Option<&[u16]>,
        proxy: bool,
    ) -> Result<Self, PlanError> {
        if endpoints.len() > MAX_PROXY_ENDPOINTS {
            return Err(PlanError::TooManyEndpoints(endpoints.len()));
        }
        for ep in endpoints {
            if ep.port() == 0 {
                return Err(PlanError::EndpointPortZero(*ep));
            }
            if ep.ip().is_unspecified() {
                return Err(PlanError::EndpointUnspecified(*ep));
            }
        }
        let loopback_ports = loopback_ports.map(|p| {
            let mut p = p.to_vec();
            p.sort_unstable();
            p.dedup();
            p
        });
        if let Some(p) = &loopback_ports {
            let n = p.len() + usize::from(proxy);
            if n > MAX_LOOPBACK_PORTS {
                return Err(PlanError::TooManyLoopbackPorts(n));
            }
        }
        Ok(Self {
            endpoints: endpoints.to_vec(),
            loopback_ports,
        })
    }

    /// The proxy endpoints (`--proxy-endpoint`).
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// The narrowed loopback ports (`None`: every port).
    pub fn loopback_ports(&self) -> Option<&[u16]> {
        self.loopback_ports.as_deref()
    }

    /// The policy the enforcers read, with the sandbox proxy's ports added
    /// to narrowed loopback (a narrowed sandbox still reaches its proxy);
    /// `audit` sets its audit flag.
    pub fn policy(&self, proxy_ports: &[u16], audit: bool) -> Policy {
        let mut p = Policy::DENY_ALL;
        if audit {
            p.audit = nono_common::AUDIT_ON;
        }
        p.loopback_any = LOOPBACK_ANY;
        for (slot, ep) in p.proxies.iter_mut().zip(&self.endpoints) {
            let d = match ep {
                SocketAddr::V4(a) => Dest::v4(a.ip().octets(), a.port()),
                SocketAddr::V6(a) => Dest::v6(a.ip().octets(), a.port()),
            };
            *slot = Endpoint::from_dest(d);
        }
        p.n_proxies = self.endpoints.len().min(MAX_PROXY_ENDPOINTS) as u32;
        if let Some(ports) = &self.loopback_ports {
            let mut ports = ports.clone();
            ports.extend_from_slice(proxy_ports);
            ports.sort_unstable();
            ports.dedup();
            ports.truncate(MAX_LOOPBACK_PORTS);
            p.loopback_any = 0;
            for (slot, port) in p.loopback_ports.iter_mut().zip(&ports) {
                *slot = *port;
            }
            p.n_loopback_ports = ports.len() as u32;
        }
        p
    }
}

/// Builds the plan. Filesystem flags without `--profile` start from the
/// built-in `default` profile, so that `--write DIR` alone does not mean
/// "nothing else is readable".
pub fn build(req: &ExecRequest) -> Result<Plan, PlanError> {
    let wants_fs = !req.read.is_empty() || !req.write.is_empty() || !req.exec.is_empty();
    let spec = match (&req.profile, wants_fs) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some("default".to_string()),
        (None, false) => None,
    };
    // SAFETY: geteuid has no preconditions.
    let privileged = unsafe { libc::geteuid() } == 0;
    if let Some(s) = &req.profile {
        if let Some(why) = crate::config::profile_refusal(&req.host, s, privileged) {
            return Err(PlanError::ProfileNotAllowed(why));
        }
    }
    if req.audit {
        if let Some(why) = audit_refusal(&req.host, privileged) {
            return Err(PlanError::AuditNotAllowed(why));
        }
    }
    // Under a host allowlist an unprivileged user's names resolve to the
    // administrator's (or built-in) profiles only.
    let restricted = req.host.profiles.allowed.is_some() && !privileged;
    let profile: Option<ResolvedProfile> = match &spec {
        Some(s) => {
            let ctx = ExpandContext::from_env();
            let load = if restricted {
                profile::load_system
            } else {
                profile::load
            };
            let p = load(s, &ctx).map_err(|source| PlanError::Profile {
                spec: s.clone(),
                source,
            })?;
            if let Some(file) = profile::shadowed_builtin(&p) {
                eprintln!("nono-agent: WARNING: profile {s:?} is {file}, not the built-in profile of that name");
            }
            Some(p)
        }
        None => None,
    };
    let mut proxy = req.proxy.clone();
    let mut loopback_ports = None;
    let mut fs = None;
    let mut env = EnvPolicy::Inherit;
    let mut user = None;
    let mut allow_unix_sockets = Vec::new();
    let mut upstream_ca = req.upstream_ca.clone();
    let mut transparent = req.transparent;
    if let Some(p) = &profile {
        if upstream_ca.is_none() {
            upstream_ca = p.network.upstream_ca.clone();
        }
        transparent |= p.network.transparent;
        let n = &p.network;
        let rules = &mut proxy.policy;
        rules.allow = [n.allow_domains.clone(), std::mem::take(&mut rules.allow)].concat();
        rules.deny = [n.deny_domains.clone(), std::mem::take(&mut rules.deny)].concat();
        rules.cidrs = [n.allow_cidrs.clone(), std::mem::take(&mut rules.cidrs)].concat();
        proxy.pins = [n.resolve.clone(), std::mem::take(&mut proxy.pins)].concat();
        if proxy.upstream.is_none() {
            proxy.upstream = n.upstream_proxy.clone();
        }
        if let Loopback::Ports(ports) = &n.loopback {
            loopback_ports = Some(ports.clone());
        }
        allow_unix_sockets = n.allow_unix_sockets.clone();
        fs = Some(FsRules {
            read: p.filesystem.read.clone(),
            write: p.filesystem.write.clone(),
            exec: p.filesystem.exec.clone(),
        });
        env = p.process.env.clone();
        user = p.process.user.clone();
    }
    let origins = PlanOrigins {
        profile: profile
            .as_ref()
            .map(|p| p.origins.clone())
            .unwrap_or_default(),
        profile_loopback_ports: loopback_ports.clone(),
        cli_loopback_ports: req.loopback_ports.clone(),
        cli_fs: [
            (profile::FsAccess::Read, &req.read),
            (profile::FsAccess::Write, &req.write),
            (profile::FsAccess::Exec, &req.exec),
        ]
        .into_iter()
        .flat_map(|(a, list)| list.iter().map(move |p| (a, p.clone())))
        .collect(),
    };
    if !req.loopback_ports.is_empty() {
        let mut ports: Vec<u16> = loopback_ports.unwrap_or_default();
        ports.extend(&req.loopback_ports);
        loopback_ports = Some(ports);
    }
    if let Some(f) = fs.as_mut() {
        f.read.extend(req.read.iter().cloned());
        f.write.extend(req.write.iter().cloned());
        f.exec.extend(req.exec.iter().cloned());
    }
    if req.user.is_some() {
        user = req.user.clone();
    }
    allow_unix_sockets.extend(req.allow_unix_sockets.iter().cloned());
    if let Some(f) = &fs {
        check_writes(&f.write)?;
    }
    let user = resolve_user(user.as_deref())?;
    if let Some(path) = &req.events {
        if let Some(stream) = crate::events::is_command_output(path) {
            return Err(PlanError::EventsToCommandOutput {
                path: path.display().to_string(),
                stream,
            });
        }
    }
    // The real values are read here, once, before anything is created.
    let specs = crate::creds::merge(
        profile
            .as_ref()
            .map(|p| p.network.credentials.as_slice())
            .unwrap_or_default(),
        &req.credentials,
    );
    let credentials = if specs.is_empty() || req.skip_credential_values {
        crate::creds::Resolved::default()
    } else {
        crate::creds::resolve(specs, upstream_ca.as_deref(), |n| std::env::var(n).ok())?
    };
    proxy.credentials = credentials.credentials.clone();
    proxy.upstream_ca = credentials.upstream_ca.clone();
    // In audit mode the proxy always runs: names the command asks for are
    // what audit is for, even when no rule would start a proxy.
    proxy.audit = req.audit;
    // Transparent mode needs the proxy (and its resolver) even with no
    // rule: every name is then refused, visibly, instead of EPERM.
    let proxy = (proxy_wanted(&proxy) || req.audit || transparent)
        .then(|| with_host_rules(proxy, &req.host));
    if let Some(p) = &proxy {
        check_credential_hosts(p, &credentials)?;
    }
    let kernel = KernelPolicy::new(
        &req.proxy_endpoints,
        loopback_ports.as_deref(),
        proxy.is_some(),
    )?;
    Ok(Plan {
        command: req.command.clone(),
        enforcer: req.enforcer,
        allow_unenforced: req.allow_unenforced,
        allow_degraded: req.allow_degraded,
        quiet: req.quiet,
        notices: req.notices,
        audit: req.audit,
        transparent,
        daemon_socket: req.daemon_socket.clone(),
        events: req.events.clone(),
        host_events: req.host.events.path.as_ref().map(|p| p.value.clone()),
        profile_name: req.profile.clone(),
        kernel,
        proxy,
        fs,
        env,
        user,
        allow_unix_sockets,
        origins,
        credentials,
    })
}

/// A credential for a host the proxy would refuse could never be used:
/// say so before running (audit mode lets it through, as the proxy will).
fn check_credential_hosts(
    proxy: &ProxyConfig,
    creds: &crate::creds::Resolved,
) -> Result<(), PlanError> {
    for (c, origin) in creds.credentials.iter().zip(&creds.origins) {
        let target = nono_proxy::Target::Name(c.spec.host.clone());
        if let Err(r) = proxy.policy.check_target(&target, c.spec.port) {
            if proxy.audit && r.auditable() {
                continue;
            }
            return Err(PlanError::CredentialHostNotAllowed {
                host: c.spec.host.clone(),
                port: c.spec.port,
                origin: origin.clone(),
                why: r.to_string(),
            });
        }
    }
    Ok(())
}

/// The checks `exec` makes of a profile beyond parsing it, for `profile
/// validate` to make the same ones: write rules that would include /proc,
/// a cgroup filesystem or bpffs, a user that does not exist, more loopback
/// ports than the kernel policy holds. (`build` makes each of them on the
/// profile merged with the flags, through the same functions.)
pub fn check_profile(p: &ResolvedProfile) -> Result<(), PlanError> {
    check_writes(&p.filesystem.write)?;
    resolve_user(p.process.user.as_deref())?;
    if let Loopback::Ports(ports) = &p.network.loopback {
        let proxy = !p.network.allow_domains.is_empty()
            || !p.network.deny_domains.is_empty()
            || !p.network.allow_cidrs.is_empty()
            || p.network.upstream_proxy.is_some();
        KernelPolicy::new(&[], Some(ports), proxy)?;
    }
    Ok(())
}

/// Write rules are judged on what they open (see
/// `landlock::check_write_rules`).
fn check_writes(write: &[PathBuf]) -> Result<(), PlanError> {
    landlock::check_write_rules(write, &landlock::forbidden_write_targets())?;
    Ok(())
}

/// The account of `--user` / `process.user`.
fn resolve_user(user: Option<&str>) -> Result<Option<Account>, PlanError> {
    Ok(user.map(users::lookup_user).transpose()?)
}

/// Why the host configuration rules audit mode out, if it does. Audit lets
/// the command connect directly to what the policy refuses, where only the
/// proxy knows the host's deny rules and upstream proxy, and does not apply
/// the profile, which an allowlist of profiles makes mandatory for
/// unprivileged users: any of these in force would be lifted by `--audit`.
pub fn audit_refusal(host: &HostConfig, privileged: bool) -> Option<String> {
    let file = host
        .file
        .as_ref()
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "the host configuration".into());
    let n = &host.network;
    if !n.deny_domains.is_empty() || !n.deny_cidrs.is_empty() {
        return Some(format!(
            "{file} denies destinations (deny_domains, deny_cidrs) that audit mode would let the \
             command reach directly"
        ));
    }
    if n.upstream_proxy.is_some() {
        return Some(format!(
            "{file} chains every sandbox to an upstream proxy, which audit mode would let the \
             command go around"
        ));
    }
    if host.profiles.allowed.is_some() && !privileged {
        return Some(format!(
            "{file} restricts the profiles unprivileged users may run with, whose rules audit \
             mode does not apply"
        ));
    }
    None
}

/// The proxy configuration with the host configuration's rules on top: its
/// deny rules first (the proxy evaluates deny rules before any allow rule,
/// so no profile or flag can re-allow them), its upstream proxy instead of
/// any other.
pub fn with_host_rules(mut proxy: ProxyConfig, host: &HostConfig) -> ProxyConfig {
    let n = &host.network;
    let rules = &mut proxy.policy;
    rules.deny = [n.deny_domains.clone(), std::mem::take(&mut rules.deny)].concat();
    rules.deny_cidrs = [n.deny_cidrs.clone(), std::mem::take(&mut rules.deny_cidrs)].concat();
    if let Some(up) = &n.upstream_proxy {
        if let Some(other) = &proxy.upstream {
            if other.authority != up.value.authority {
                eprintln!(
                    "nono-agent: WARNING: upstream proxy {} ignored: the host configuration ({}) \
                     chains every sandbox to {}",
                    other.authority, up.at, up.value.authority
                );
            }
        }
        proxy.upstream = Some(up.value.clone());
    }
    proxy
}

/// Whether any rule asks for the proxy (pins, a DNS server and limits alone
/// do not: they only shape a proxy that rules start).
pub fn proxy_wanted(c: &ProxyConfig) -> bool {
    !c.credentials.is_empty()
        || !c.policy.allow.is_empty()
        || !c.policy.deny.is_empty()
        || !c.policy.cidrs.is_empty()
        || c.upstream.is_some()
}

impl Plan {
    /// Files the host protection binds read-only besides its fixed list:
    /// the agent's own events files, and, for a sandbox run as another
    /// user (`--user`), that user's auto-run files (the caller's are
    /// protected already; the command's `HOME` is the target user's).
    /// exec, why and the dry run all take their list from here.
    pub fn protected_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .events
            .iter()
            .chain(&self.host_events)
            .filter(|p| p.as_os_str() != "-")
            .cloned()
            .collect();
        if let Some(account) = &self.user {
            files.extend(crate::sandbox::protect::home_autorun_targets(&account.home));
        }
        files
    }

    /// What the filesystem layer is, for the start-up line.
    pub fn filesystem_line(&self, privileged: bool) -> String {
        let protected = if privileged {
            "system paths and auto-run files read-only"
        } else {
            "auto-run files read-only in a user namespace, system files by host permissions"
        };
        if self.audit && self.fs.is_some() {
            let name = self.profile_name.as_deref().unwrap_or("default");
            return format!("audit: the rules of profile {name} are not applied ({protected})");
        }
        match (&self.profile_name, self.fs.is_some()) {
            (Some(name), _) => format!("profile {name} ({protected})"),
            (None, true) => format!("profile default with --read/--write/--exec ({protected})"),
            (None, false) => {
                format!("host, protected ({protected}; other processes out of reach)")
            }
        }
    }
}

/// The environment the command starts with under `env`.
pub fn environment(env: &EnvPolicy) -> Vec<(OsString, OsString)> {
    let all = std::env::vars_os().filter(|(k, _)| !k.to_string_lossy().starts_with("NONO_"));
    match env {
        EnvPolicy::Inherit => all.collect(),
        // A clean environment still needs a PATH to find programs.
        EnvPolicy::Clean => vec![(
            "PATH".into(),
            "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin".into(),
        )],
        EnvPolicy::PassThrough(keep) => all
            .filter(|(k, _)| keep.iter().any(|n| k.to_str() == Some(n.as_str())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(matches!(
            KernelPolicy::new(&[v4("198.51.100.2:0")], None, false),
            Err(PlanError::EndpointPortZero(_))
        ));
        assert!(matches!(
            KernelPolicy::new(&[v4("0.0.0.0:3128")], None, false),
            Err(PlanError::EndpointUnspecified(_))
        ));
        let many: Vec<SocketAddr> = (1..=17).map(|i| v4(&format!("198.51.100.2:{i}"))).collect();
        assert!(matches!(
            KernelPolicy::new(&many, None, false),
            Err(PlanError::TooManyEndpoints(17))
        ));
        let p = KernelPolicy::new(&many[..16], None, false)
            .unwrap()
            .policy(&[], false);
        assert_eq!(p.n_proxies, 16);
        assert_eq!(p.loopback_any, LOOPBACK_ANY);
    }

    #[test]
    fn narrowed_loopback_keeps_the_proxy_port() {
        let k = KernelPolicy::new(&[], Some(&[5432, 80, 5432]), true).unwrap();
        let p = k.policy(&[41000], false);
        assert_eq!(p.loopback_any, 0);
        assert_eq!(p.n_loopback_ports, 3);
        assert_eq!(&p.loopback_ports[..3], &[80, 5432, 41000]);
        // Without narrowing, every port is open and the proxy port adds nothing.
        let p = KernelPolicy::new(&[], None, true)
            .unwrap()
            .policy(&[41000], false);
        assert_eq!(p.loopback_any, LOOPBACK_ANY);
        assert_eq!(p.n_loopback_ports, 0);
    }

    #[test]
    fn host_denials_beat_flags_and_profiles() {
        use nono_proxy::Target;
        let host = crate::config::parse(
            "[network]\ndeny_domains = [\"evil.test\"]\ndeny_cidrs = [\"192.0.2.0/24\"]\n\
             upstream_proxy = \"http://up.test:3128\"\n",
            "/etc/nono-agent/config.toml",
        )
        .unwrap();
        let mut req = ExecRequest {
            host,
            command: vec!["true".into()],
            ..Default::default()
        };
        req.proxy.policy.allow = vec!["evil.test".parse().unwrap(), "ok.test".parse().unwrap()];
        req.proxy.policy.cidrs = vec!["192.0.2.0/24".parse().unwrap()];
        let plan = build(&req).unwrap();
        let proxy = plan.proxy.unwrap();
        let p = &proxy.policy;
        let e = p
            .check_target(&Target::parse("evil.test").unwrap(), 443)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "evil.test:443 is denied by rule deny-domain evil.test \
             (host config /etc/nono-agent/config.toml:2)"
        );
        assert!(p
            .check_target(&Target::parse("ok.test").unwrap(), 443)
            .is_ok());
        assert!(p
            .check_target(&Target::parse("192.0.2.9").unwrap(), 443)
            .is_err());
        assert_eq!(proxy.upstream.unwrap().authority, "up.test:3128");
        // No rule asks for a proxy: the host's rules alone do not start one.
        let req = ExecRequest {
            host: req.host.clone(),
            command: vec!["true".into()],
            ..Default::default()
        };
        assert!(build(&req).unwrap().proxy.is_none());
    }

    #[test]
    fn a_host_configuration_with_denials_refuses_audit() {
        let host = crate::config::parse(
            "[network]\ndeny_cidrs = [\"10.0.0.0/8\"]\n",
            "/etc/nono-agent/config.toml",
        )
        .unwrap();
        let req = ExecRequest {
            host,
            audit: true,
            command: vec!["true".into()],
            ..Default::default()
        };
        let e = build(&req).err().expect("audit refused");
        assert!(e.to_string().contains("deny_cidrs"), "{e}");
        // Without --audit the same host configuration is fine, and audit
        // without one too.
        assert!(build(&ExecRequest {
            audit: false,
            ..req.clone()
        })
        .is_ok());
        let plain = ExecRequest {
            audit: true,
            command: vec!["true".into()],
            ..Default::default()
        };
        assert!(build(&plain).unwrap().audit);
        let host = crate::config::parse(
            "[profiles]\nallowed = [\"ci-node\"]\n",
            "/etc/nono-agent/config.toml",
        )
        .unwrap();
        assert!(audit_refusal(&host, false).is_some());
        assert!(audit_refusal(&host, true).is_none());
    }

    #[test]
    fn room_is_kept_for_the_proxy_port() {
        let ports: Vec<u16> = (1..=MAX_LOOPBACK_PORTS as u16).collect();
        assert!(KernelPolicy::new(&[], Some(&ports), false).is_ok());
        assert!(matches!(
            KernelPolicy::new(&[], Some(&ports), true),
            Err(PlanError::TooManyLoopbackPorts(n)) if n == MAX_LOOPBACK_PORTS + 1
        ));
    }
}
