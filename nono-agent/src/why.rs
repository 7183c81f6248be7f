//! `why`: the verdict a sandbox would give a destination or a path, and the
//! rule behind it.
//!
//! Nothing here decides anything of its own: the network verdicts come from
//! `nono_common`'s [`decide_connect`] / [`decide_sendmsg`] (what the BPF
//! programs and the seccomp supervisor run) on the policy the plan hands the
//! enforcers, and from the proxy's [`ProxyPolicy::check_target`] /
//! [`ProxyPolicy::check_resolved`]; the filesystem verdict from the grants
//! `landlock::prepare` puts in the ruleset ([`landlock::grants`]) and the
//! read-only binds of the host protection ([`protect`]). This module only
//! says which rule (profile file and line, flag, or built-in reason) the
//! deciding function's answer points at.

use landlock::{AccessFs, BitFlags};
use nono_common::{decide_connect, decide_sendmsg, Decision, Dest, Reason};
use nono_proxy::{ProxyPolicy, Refusal, Target};
use serde::Serialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::plan::Plan;
use crate::profile::FsAccess;
use crate::sandbox::{landlock as ll, protect};

/// What `why` is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// A network destination.
    Net {
        /// Where to.
        dest: NetDest,
        /// UDP (a send) rather than TCP (a connect).
        udp: bool,
    },
    /// A filesystem path and the access wanted.
    Path {
        /// The path as given (made absolute against the working directory).
        path: PathBuf,
        /// Read, write or execute.
        access: FsAccess,
    },
}

/// A destination: an address, or a name (reached only through the proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetDest {
    /// `203.0.113.9:22`, `[2001:db8::1]:53`.
    Addr(SocketAddr),
    /// `api.example.com:443` (the name as given; the proxy normalises it).
    Name(String, u16),
}

/// Why a destination could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a destination: give HOST:PORT, ADDR:PORT or [V6ADDR]:PORT")]
pub struct DestError(pub String);

impl std::str::FromStr for NetDest {
    type Err = DestError;

    /// `ADDR:PORT`, `[V6]:PORT`, `NAME:PORT`; a name without a port means
    /// port 443 (what an HTTPS client asks the proxy for).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DestError(s.to_string());
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self::Addr(a));
        }
        if s.parse::<IpAddr>().is_ok() || s.starts_with('[') {
            return Err(bad());
        }
        let (name, port) = match s.rsplit_once(':') {
            Some((n, p)) => (n, p.parse::<u16>().map_err(|_| bad())?),
            None => (s, 443),
        };
        if name.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Self::Name(name.to_string(), port))
    }
}

impl fmt::Display for NetDest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Name(n, p) => write!(f, "{n}:{p}"),
        }
    }
}

/// One layer's verdict and the rule behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Which layer: `direct` (the kernel enforcer), `proxy`, `landlock`,
    /// `host protection`.
    pub layer: &'static str,
    /// Whether this layer lets it through.
    pub allowed: bool,
    /// The decision function's reason (`not-allowed`, the proxy's refusal
    /// text, ...).
    pub reason: String,
    /// The rule that decided, as written (`allow-domain *.example.com`,
    /// `write /home/u/src`), or the built-in rule.
    pub rule: String,
    /// Where it was written: `FILE:LINE:COLUMN`, `command line (--flag)`,
    /// `host config FILE:LINE` or `built-in`.
    pub origin: String,
}

/// The verdict and every layer's part in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// The question, as shown.
    pub subject: String,
    /// Allowed by at least one way in (network: directly or through the
    /// proxy) and, for paths, by every layer.
    pub allowed: bool,
    /// Each layer asked.
    pub steps: Vec<Step>,
    /// What the answer cannot know (addresses resolved at request time ...).
    pub notes: Vec<String>,
}

impl Answer {
    /// The exit code of `why`: 0 allowed, 1 denied.
    pub fn exit_code(&self) -> i32 {
        if self.allowed {
            0
        } else {
            1
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |a: bool| if a { "allowed" } else { "denied" };
        writeln!(f, "{}: {}", self.subject, v(self.allowed))?;
        for s in &self.steps {
            if s.allowed {
                let reason = if s.reason == "allowed" {
                    String::new()
                } else {
                    format!(" ({})", s.reason)
                };
                writeln!(
                    f,
                    "  {}: allowed{reason} by {} [{}]",
                    s.layer, s.rule, s.origin
                )?;
            } else {
                writeln!(
                    f,
                    "  {}: {} ({}): {} [{}]",
                    s.layer,
                    v(s.allowed),
                    s.reason,
                    s.rule,
                    s.origin
                )?;
            }
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        Ok(())
    }
}

const BUILTIN: &str = "built-in";

/// Answers a question about the sandbox `plan` describes. `privileged`
/// selects the host protection list (root sandboxes get the system paths
/// read-only too).
pub fn explain(plan: &Plan, q: &Question, privileged: bool) -> Answer {
    match q {
        Question::Net { dest, udp } => explain_net(plan, dest, *udp),
        Question::Path { path, access } => explain_path(plan, path, *access, privileged),
    }
}

fn explain_net(plan: &Plan, dest: &NetDest, udp: bool) -> Answer {
    let proto = if udp { "udp" } else { "tcp" };
    let mut a = Answer {
        subject: format!("{dest} ({proto})"),
        allowed: false,
        steps: Vec::new(),
        notes: Vec::new(),
    };
    match dest {
        NetDest::Addr(sa) => {
            a.steps.push(direct_step(plan, *sa, udp));
            if udp {
                a.notes.push(
                    "the proxy carries TCP only: UDP is judged by the kernel enforcer alone".into(),
                );
            } else {
                a.steps.push(proxy_step(
                    plan,
                    &Target::Ip(sa.ip()),
                    sa.port(),
                    &mut a.notes,
                ));
            }
            if let Some(range) = nono_proxy::never_allowed(sa.ip()) {
                a.notes.push(format!(
                    "{} is in {range}: no rule can open it through the proxy",
                    sa.ip()
                ));
            }
        }
        NetDest::Name(name, port) => {
            if udp {
                a.steps.push(Step {
                    layer: "direct",
                    allowed: false,
                    reason: "a name is not an address".into(),
                    rule: "names are reached only through the proxy, which carries TCP only".into(),
                    origin: BUILTIN.into(),
                });
            } else {
                match Target::parse(name) {
                    Ok(t) => a.steps.push(proxy_step(plan, &t, *port, &mut a.notes)),
                    Err(e) => a.steps.push(Step {
                        layer: "proxy",
                        allowed: false,
                        reason: e.to_string(),
                        rule: "host names must be valid".into(),
                        origin: BUILTIN.into(),
                    }),
                }
            }
        }
    }
    a.allowed = a.steps.iter().any(|s| s.allowed);
    a
}

/// The kernel enforcer's verdict on a direct connect (TCP) or send (UDP),
/// from the same decision function the BPF programs and the supervisor run.
fn direct_step(plan: &Plan, sa: SocketAddr, udp: bool) -> Step {
    // The sandbox proxy's own port is only known once it listens; with
    // narrowed loopback it is added to the list (see KernelPolicy::policy).
    let policy = plan.kernel.policy(&[], plan.audit);
    let dest = match sa {
        SocketAddr::V4(v) => Dest::v4(v.ip().octets(), v.port()),
        SocketAddr::V6(v) => Dest::v6(v.ip().octets(), v.port()),
    };
    let d: Decision = if udp {
        decide_sendmsg(&policy, &dest)
    } else {
        decide_connect(&policy, &dest)
    };
    let (rule, origin) = direct_rule(plan, d, sa);
    Step {
        layer: "direct",
        allowed: d.allow,
        reason: d.reason.name().into(),
        rule,
        origin,
    }
}

/// The rule a kernel decision points at.
fn direct_rule(plan: &Plan, d: Decision, sa: SocketAddr) -> (String, String) {
    let o = &plan.origins;
    let narrowed = plan.kernel.loopback_ports();
    let loopback_origin = || match &o.profile.loopback {
        Some(at) => at.to_string(),
        None => BUILTIN.to_string(),
    };
    match d.reason {
        Reason::Loopback => match narrowed {
            None => (
                "loopback 127.0.0.1 / ::1, every port".into(),
                loopback_origin(),
            ),
            Some(_) if o.cli_loopback_ports.contains(&sa.port()) => (
                format!("loopback port {}", sa.port()),
                "command line (--loopback-port)".into(),
            ),
            Some(_) => (
                format!("loopback port {}", sa.port()),
                match &o.profile.loopback {
                    Some(at) => at.to_string(),
                    None => "profile".into(),
                },
            ),
        },
        Reason::Proxy => (
            format!("proxy endpoint {sa}"),
            "command line (--proxy-endpoint)".into(),
        ),
        Reason::LoopbackPort => {
            let ports: Vec<String> = narrowed
                .unwrap_or_default()
                .iter()
                .map(u16::to_string)
                .collect();
            let mut from = Vec::new();
            if let (Some(_), Some(at)) = (&o.profile_loopback_ports, &o.profile.loopback) {
                from.push(at.to_string());
            }
            if !o.cli_loopback_ports.is_empty() {
                from.push("command line (--loopback-port)".into());
            }
            (
                format!(
                    "loopback narrowed to ports [{}] (and the sandbox proxy's port)",
                    ports.join(", ")
                ),
                from.join(", "),
            )
        }
        Reason::OtherLoopback => (
            "only 127.0.0.1 is loopback: other 127/8 addresses are local services (a DNS stub) outside the policy".into(),
            BUILTIN.into(),
        ),
        Reason::Unspecified => (
            "the unspecified address reaches the host itself, bypassing the loopback port rules".into(),
            BUILTIN.into(),
        ),
        _ => (
            "only loopback and the proxy endpoints are reachable directly; everything else goes through the proxy".into(),
            BUILTIN.into(),
        ),
    }
}

/// The sandbox proxy's verdict, from the proxy's own rule check.
fn proxy_step(plan: &Plan, target: &Target, port: u16, notes: &mut Vec<String>) -> Step {
    let Some(cfg) = &plan.proxy else {
        return Step {
            layer: "proxy",
            allowed: false,
            reason: "no proxy runs in this sandbox".into(),
            rule: "the proxy starts only with --allow-domain, --deny-domain, --allow-cidr or --upstream-proxy (or a profile's network rules)".into(),
            origin: BUILTIN.into(),
        };
    };
    let policy: &ProxyPolicy = &cfg.policy;
    match policy.check_target(target, port) {
        Ok(rule) => {
            let mut step = Step {
                layer: "proxy",
                allowed: true,
                reason: "allowed".into(),
                rule: rule.to_string(),
                origin: rule.origin().to_string(),
            };
            if let Target::Name(name) = target {
                match cfg.pins.iter().find(|p| p.name == *name) {
                    Some(pin) => {
                        // Every pinned address must pass as well.
                        for ip in &pin.addrs {
                            if let Err(r) = policy.check_resolved(*ip, port) {
                                step.allowed = false;
                                step.reason = r.to_string();
                                if let Some(rr) = r.rule() {
                                    step.rule = rr.to_string();
                                    step.origin = rr.origin().to_string();
                                } else {
                                    step.rule = refusal_rule(&r);
                                    step.origin = BUILTIN.into();
                                }
                                break;
                            }
                        }
                    }
                    None => notes.push(
                        "the name's addresses are checked when the proxy resolves it: link-local and metadata addresses never pass, loopback/private/CGNAT/ULA only with --allow-cidr".into(),
                    ),
                }
            }
            step
        }
        Err(r) => {
            let (rule, origin) = match r.rule() {
                Some(rr) => (rr.to_string(), rr.origin().to_string()),
                None => (refusal_rule(&r), BUILTIN.into()),
            };
            Step {
                layer: "proxy",
                allowed: false,
                reason: r.to_string(),
                rule,
                origin,
            }
        }
    }
}

/// The built-in rule behind a refusal no configured rule made.
fn refusal_rule(r: &Refusal) -> String {
    match r {
        Refusal::NotAllowed { .. } => {
            "names not matched by any allow-domain rule are refused".into()
        }
        Refusal::IpNotCovered { .. } => "IP literals need an allow-cidr rule".into(),
        Refusal::Never { range, .. } => format!("{range} is never allowed"),
        Refusal::Private { range, .. } => format!("{range} needs an allow-cidr rule"),
        Refusal::InvalidHost(_) => "host names must be valid".into(),
        Refusal::PortNotAllowed { allowed, .. } => format!(
            "the allow-domain rules matching the name allow only port(s) {}",
            allowed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Refusal::Denied { .. } | Refusal::CidrDenied { .. } => "deny rule".into(),
    }
}

/// The right a question about `access` needs on `path`.
fn needed(access: FsAccess, is_dir: bool, exists: bool) -> BitFlags<AccessFs> {
    match (access, exists) {
        (FsAccess::Read, _) if is_dir => AccessFs::ReadDir.into(),
        (FsAccess::Read, _) => AccessFs::ReadFile.into(),
        (FsAccess::Write, true) if is_dir => AccessFs::MakeReg.into(),
        (FsAccess::Write, true) => AccessFs::WriteFile.into(),
        // Creating it: the right to make a regular file in its directory.
        (FsAccess::Write, false) => AccessFs::MakeReg.into(),
        (FsAccess::Exec, _) => AccessFs::Execute.into(),
    }
}

/// A ruleset grant with its path resolved as the kernel sees it (the rule
/// is on the inode the path leads to).
#[derive(Debug, Clone)]
pub struct ResolvedGrant {
    /// Where the rule's path leads.
    pub real: PathBuf,
    /// The rule as written.
    pub path: PathBuf,
    /// Its list.
    pub kind: FsAccess,
    /// Its rights on that inode ([`ll::effective_access`]).
    pub access: BitFlags<AccessFs>,
}

/// The grants of the plan's ruleset that exist here (`prepare` skips the
/// others), resolved.
pub fn resolved_grants(rules: &ll::FsRules) -> Vec<ResolvedGrant> {
    ll::grants(rules)
        .into_iter()
        .filter_map(|g| {
            let meta = std::fs::metadata(g.path).ok()?;
            Some(ResolvedGrant {
                real: std::fs::canonicalize(g.path).ok()?,
                path: g.path.to_path_buf(),
                kind: g.kind,
                access: ll::effective_access(g.access, meta.is_dir()),
            })
        })
        .collect()
}

/// Landlock's rule: the rights on a path are the union of the rights of
/// every rule on it or on a directory above it. Returns the grants that
/// give `need` (empty: denied) and those that cover the path at all.
pub fn landlock_verdict<'a>(
    grants: &'a [ResolvedGrant],
    real: &Path,
    need: BitFlags<AccessFs>,
) -> (Vec<&'a ResolvedGrant>, Vec<&'a ResolvedGrant>) {
    let covering: Vec<&ResolvedGrant> = grants
        .iter()
        .filter(|g| real.starts_with(&g.real))
        .collect();
    let granting = covering
        .iter()
        .copied()
        .filter(|g| g.access.contains(need))
        .collect();
    (granting, covering)
}

/// The path as the kernel will resolve it: symlinks and `..` followed; a
/// path that does not exist yet is its resolved directory plus its name.
fn resolve_path(p: &Path) -> (PathBuf, bool, bool) {
    if let Ok(real) = std::fs::canonicalize(p) {
        let is_dir = real.is_dir();
        return (real, true, is_dir);
    }
    let parent = p.parent().unwrap_or(Path::new("/"));
    let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
    (parent.join(p.file_name().unwrap_or_default()), false, false)
}

fn fs_origin(plan: &Plan, g: &ResolvedGrant) -> String {
    match plan.origins.profile.fs_rule(g.kind, &g.path) {
        Some(at) => at.to_string(),
        None if plan
            .origins
            .cli_fs
            .iter()
            .any(|(k, p)| *k == g.kind && *p == g.path) =>
        {
            format!("command line (--{})", g.kind.name())
        }
        None => "profile".into(),
    }
}

fn explain_path(plan: &Plan, path: &Path, access: FsAccess, privileged: bool) -> Answer {
    let (real, exists, is_dir) = resolve_path(path);
    let mut a = Answer {
        subject: format!("{} ({})", path.display(), access.name()),
        allowed: false,
        steps: Vec::new(),
        notes: Vec::new(),
    };
    if real != path {
        a.notes.push(format!("it resolves to {}", real.display()));
    }
    if !exists {
        a.notes
            .push("it does not exist: judged as creating it".into());
    }
    match &plan.fs {
        None => a.steps.push(Step {
            layer: "landlock",
            allowed: true,
            reason: "no filesystem rules".into(),
            rule: "without a profile (or --read/--write/--exec) Landlock restricts no path".into(),
            origin: BUILTIN.into(),
        }),
        Some(rules) => {
            let grants = resolved_grants(rules);
            let need = needed(access, is_dir, exists);
            let (granting, covering) = landlock_verdict(&grants, &real, need);
            let step = match granting.first() {
                Some(g) => Step {
                    layer: "landlock",
                    allowed: true,
                    reason: "allowed".into(),
                    rule: format!("{} {}", g.kind.name(), g.path.display()),
                    origin: fs_origin(plan, g),
                },
                None => Step {
                    layer: "landlock",
                    allowed: false,
                    reason: format!(
                        "no rule grants {} on it or a directory above it",
                        access.name()
                    ),
                    rule: match covering.last() {
                        Some(g) => format!("closest rule: {} {}", g.kind.name(), g.path.display()),
                        None => "only the profile's paths are reachable".into(),
                    },
                    origin: match covering.last() {
                        Some(g) => fs_origin(plan, g),
                        None => BUILTIN.into(),
                    },
                },
            };
            a.steps.push(step);
        }
    }
    if access == FsAccess::Write {
        let self_files: Vec<PathBuf> = plan.protected_files();
        let binds = if privileged {
            protect::readonly_targets(&self_files)
        } else {
            protect::user_targets(&self_files)
        };
        match protect::covering(&binds, &real) {
            Some(b) if b.kind == protect::Kind::ReadOnly => {
                let what = if protect::is_system_path(&b.path) {
                    "system path"
                } else {
                    "auto-run file or the agent's own file"
                };
                a.steps.push(Step {
                    layer: "host protection",
                    allowed: false,
                    reason: format!("{} is read-only in every sandbox", b.path.display()),
                    rule: format!("host protection: {what}"),
                    origin: BUILTIN.into(),
                });
            }
            Some(b) => a.steps.push(Step {
                layer: "host protection",
                allowed: true,
                reason: format!("{} stays writable", b.path.display()),
                rule: "host protection: writable exception".into(),
                origin: BUILTIN.into(),
            }),
            None => {}
        }
    }
    a.allowed = a.steps.iter().all(|s| s.allowed);
    a.notes
        .push("file permissions (owner, mode) apply on top, as outside the sandbox".into());
    a
}

#[cfg(test)]
mod tests;
