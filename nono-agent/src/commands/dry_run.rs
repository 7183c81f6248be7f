//! `exec --dry-run`: the plan `exec` would carry out, printed instead of
//! carried out. Nothing is created: no cgroup, no pin, no BPF program, no
//! proxy, no events file, no child; stale sandboxes are not swept. The
//! enforcer is predicted by `enforcer::choose` (the function `exec` uses)
//! with BPF judged by its prerequisites instead of being loaded (`doctor`
//! loads it for real), and the daemon asked for its status only.

use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::enforcer::{self, Choice, Host, Requested};
use crate::plan::{DryRun, Plan};
use crate::profile::FsAccess;
use crate::sandbox::{cgroup, daemons, landlock, protect};

/// One rule with where it was written.
#[derive(Debug, Serialize)]
struct RuleLine {
    rule: String,
    origin: String,
}

#[derive(Debug, Serialize)]
struct Report {
    command: Vec<String>,
    program: String,
    enforcer: Option<String>,
    enforcer_reason: String,
    loopback: RuleLine,
    proxy_endpoints: Vec<String>,
    /// Transparent mode (`--transparent`, `[network] transparent`).
    transparent: bool,
    proxy: Option<ProxyReport>,
    filesystem: Option<Vec<FsLine>>,
    landlock_abi: i64,
    host_protection: Vec<String>,
    hidden_daemon_sockets: Vec<String>,
    user: Option<String>,
    env: String,
    events: Vec<String>,
}

#[derive(Debug, Serialize)]
struct ProxyReport {
    allow: Vec<RuleLine>,
    deny: Vec<RuleLine>,
    allow_cidrs: Vec<RuleLine>,
    deny_cidrs: Vec<RuleLine>,
    resolve: Vec<String>,
    dns_server: Option<String>,
    upstream: Option<String>,
    /// Credentials injected (never their values).
    credentials: Vec<RuleLine>,
}

#[derive(Debug, Serialize)]
struct FsLine {
    access: &'static str,
    path: String,
    origin: String,
    /// Missing paths are skipped by the ruleset.
    exists: bool,
}

/// Which enforcer `exec` would use, and why.
fn predict(plan: &Plan, privileged: bool) -> (Option<String>, String) {
    if plan.enforcer != Requested::Seccomp {
        if let Some(path) = &plan.daemon_socket {
            if let Ok(Some(mut c)) = crate::daemon::client::Client::connect(path) {
                if c.status().is_ok() {
                    return (
                        Some("bpf (daemon)".into()),
                        format!("the daemon answers on {}", path.display()),
                    );
                }
            }
        }
    }
    // The same facts `exec` decides on (a root sandbox without a visible
    // cgroup2 is refused there, so here too).
    let host = Host::detect(privileged);
    // The prerequisites `apply_bpf` needs, without loading anything.
    let try_bpf = || -> Result<(), String> {
        cgroup::discover_root().map_err(|e| crate::util::chain(&e))?;
        Ok(())
    };
    match enforcer::choose(plan.enforcer, host, plan.allow_unenforced, try_bpf) {
        Ok(Choice::Bpf(())) => (
            Some("bpf".into()),
            "root, with a cgroup2 filesystem: the programs would be loaded and attached (not tried by --dry-run; `nono-agent doctor` tries them)".into(),
        ),
        Ok(Choice::Seccomp { why_not_bpf }) => (
            Some("seccomp".into()),
            why_not_bpf.unwrap_or_else(|| "asked for with --enforcer seccomp".into()),
        ),
        Ok(Choice::Unenforced { why }) => (
            Some("none".into()),
            format!("{why}; --allow-unenforced: the command would NOT be confined"),
        ),
        Err(e) => (None, format!("exec would refuse to run: {e}")),
    }
}

fn fs_origin(plan: &Plan, access: FsAccess, path: &Path) -> String {
    match plan.origins.profile.fs_rule(access, path) {
        Some(at) => at.to_string(),
        None if plan
            .origins
            .cli_fs
            .iter()
            .any(|(a, p)| *a == access && p == path) =>
        {
            format!("command line (--{})", access.name())
        }
        None => "profile".into(),
    }
}

/// Prints the plan; 0.
pub fn run(plan: &Plan, program: &Path, privileged: bool, mode: DryRun) -> Result<i32> {
    let (enforcer, enforcer_reason) = predict(plan, privileged);
    let o = &plan.origins;
    let loopback = match plan.kernel.loopback_ports() {
        None => RuleLine {
            rule: "127.0.0.1 / ::1, every port".into(),
            origin: o
                .profile
                .loopback
                .as_ref()
                .map_or("built-in".into(), ToString::to_string),
        },
        Some(ports) => RuleLine {
            rule: format!(
                "127.0.0.1 / ::1, ports {:?}{}",
                ports,
                if plan.proxy.is_some() {
                    " and the sandbox proxy's"
                } else {
                    ""
                }
            ),
            origin: [
                o.profile_loopback_ports
                    .as_ref()
                    .and(o.profile.loopback.as_ref())
                    .map(ToString::to_string),
                (!o.cli_loopback_ports.is_empty())
                    .then(|| "command line (--loopback-port)".to_string()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
        },
    };
    let rules = |v: &[nono_proxy::DomainRule]| -> Vec<RuleLine> {
        v.iter()
            .map(|r| RuleLine {
                rule: r.text.clone(),
                origin: r.origin.to_string(),
            })
            .collect()
    };
    let cidrs = |v: &[nono_proxy::CidrRule]| -> Vec<RuleLine> {
        v.iter()
            .map(|r| RuleLine {
                rule: r.text.clone(),
                origin: r.origin.to_string(),
            })
            .collect()
    };
    let proxy = plan.proxy.as_ref().map(|c| ProxyReport {
        allow: rules(&c.policy.allow),
        deny: rules(&c.policy.deny),
        allow_cidrs: cidrs(&c.policy.cidrs),
        deny_cidrs: cidrs(&c.policy.deny_cidrs),
        resolve: c
            .pins
            .iter()
            .map(|p| {
                let a: Vec<String> = p.addrs.iter().map(ToString::to_string).collect();
                format!("{}={}", p.name, a.join(","))
            })
            .collect(),
        dns_server: c.dns_server.map(|d| d.to_string()),
        upstream: c.upstream.as_ref().map(|u| u.authority.clone()),
        credentials: plan
            .credentials
            .credentials
            .iter()
            .zip(&plan.credentials.origins)
            .map(|(c, o)| RuleLine {
                rule: format!(
                    "{}:{} {} from {}{}",
                    c.spec.host,
                    c.spec.port,
                    c.spec.header,
                    c.name(),
                    c.spec
                        .env
                        .as_ref()
                        .map(|e| format!(", placeholder in {e}"))
                        .unwrap_or_default()
                ),
                origin: o.clone(),
            })
            .collect(),
    });
    let filesystem = plan.fs.as_ref().map(|f| {
        landlock::grants(f)
            .into_iter()
            .map(|g| FsLine {
                access: g.kind.name(),
                path: g.path.display().to_string(),
                origin: fs_origin(plan, g.kind, g.path),
                exists: g.path.exists(),
            })
            .collect()
    });
    let self_files: Vec<PathBuf> = plan.protected_files();
    let binds = if privileged {
        protect::readonly_targets(&self_files)
    } else {
        protect::user_targets(&self_files)
    };
    let host_protection = binds
        .iter()
        .filter(|b| b.kind != protect::Kind::Anchor)
        .map(|b| {
            let k = match b.kind {
                protect::Kind::ReadOnly => "read-only",
                _ => "writable",
            };
            format!("{} ({k})", b.path.display())
        })
        .collect();
    let hidden = daemons::denied(&plan.allow_unix_sockets)
        .into_iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let report = Report {
        command: plan
            .command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        program: program.display().to_string(),
        enforcer,
        enforcer_reason,
        loopback,
        proxy_endpoints: plan
            .kernel
            .endpoints()
            .iter()
            .map(ToString::to_string)
            .collect(),
        transparent: plan.transparent,
        proxy,
        filesystem,
        landlock_abi: landlock::kernel_abi(),
        host_protection,
        hidden_daemon_sockets: hidden,
        user: plan
            .user
            .as_ref()
            .map(|a| format!("{} (uid {}, gid {})", a.login(), a.uid, a.gid)),
        env: format!("{:?}", plan.env),
        events: plan
            .events
            .iter()
            .chain(&plan.host_events)
            .map(|p| p.display().to_string())
            .collect(),
    };
    match mode {
        DryRun::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        DryRun::Text => print!("{}", crate::notice::escape_lines(&text(&report))),
    }
    Ok(0)
}

fn text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "dry run: nothing was created and nothing was run");
    let _ = writeln!(s, "command:   {} ({})", r.command.join(" "), r.program);
    let _ = writeln!(
        s,
        "enforcer:  {} ({})",
        r.enforcer.as_deref().unwrap_or("none: exec would fail"),
        r.enforcer_reason
    );
    let _ = writeln!(s, "network (kernel):");
    let _ = writeln!(s, "  loopback: {} [{}]", r.loopback.rule, r.loopback.origin);
    for e in &r.proxy_endpoints {
        let _ = writeln!(s, "  proxy endpoint: {e} [command line (--proxy-endpoint)]");
    }
    if r.transparent {
        let _ = writeln!(
            s,
            "  transparent: TCP to any other address goes to the proxy, which decides by name; \
             DNS (port 53, UDP and TCP, any address) goes to the agent's resolver, which answers \
             allowed names only (cloud metadata, link-local, other 127/8 stay denied)"
        );
        let _ = writeln!(s, "  everything else (other UDP): denied [built-in]");
    } else {
        let _ = writeln!(s, "  everything else: denied [built-in]");
    }
    match &r.proxy {
        None => {
            let _ = writeln!(s, "proxy:     none (no network rules)");
        }
        Some(p) => {
            let _ = writeln!(s, "proxy:     on loopback, names checked before DNS");
            for (label, list) in [
                ("deny-domain", &p.deny),
                ("deny-cidr", &p.deny_cidrs),
                ("allow-domain", &p.allow),
                ("allow-cidr", &p.allow_cidrs),
            ] {
                for l in list {
                    let _ = writeln!(s, "  {label} {} [{}]", l.rule, l.origin);
                }
            }
            for r in &p.resolve {
                let _ = writeln!(s, "  resolve {r}");
            }
            if let Some(d) = &p.dns_server {
                let _ = writeln!(s, "  dns-server {d}");
            }
            if let Some(u) = &p.upstream {
                let _ = writeln!(s, "  upstream-proxy {u}");
            }
            for c in &p.credentials {
                let _ = writeln!(s, "  credential {} [{}]", c.rule, c.origin);
            }
        }
    }
    match &r.filesystem {
        None => {
            let _ = writeln!(
                s,
                "filesystem: no rules (no profile): Landlock restricts no path (signals and abstract sockets scoped)"
            );
        }
        Some(list) => {
            let _ = writeln!(s, "filesystem (Landlock ABI {}):", r.landlock_abi);
            for f in list {
                let _ = writeln!(
                    s,
                    "  {} {}{} [{}]",
                    f.access,
                    f.path,
                    if f.exists { "" } else { " (missing: skipped)" },
                    f.origin
                );
            }
            let _ = writeln!(s, "  everything else: denied [built-in]");
        }
    }
    let _ = writeln!(s, "host protection (whatever the rules say):");
    for h in &r.host_protection {
        let _ = writeln!(s, "  {h}");
    }
    if !r.hidden_daemon_sockets.is_empty() {
        let _ = writeln!(
            s,
            "daemon sockets refused: {}",
            r.hidden_daemon_sockets.join(", ")
        );
    }
    if let Some(u) = &r.user {
        let _ = writeln!(s, "user:      {u}");
    }
    let _ = writeln!(s, "env:       {}", r.env);
    if !r.events.is_empty() {
        let _ = writeln!(s, "events:    {}", r.events.join(", "));
    }
    s
}
