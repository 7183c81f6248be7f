//! What one `exec` will enforce: the profile (if any) with the command-line
//! flags layered on top, in the shapes the enforcers need.

use anyhow::{Context as _, Result};
use std::path::PathBuf;

use crate::cli::{ExecArgs, ProxyArgs};
use crate::profile::{self, EnvPolicy, ExpandContext, Loopback, ResolvedProfile};
use crate::sandbox::landlock::FsRules;

/// The merged sandbox description.
pub struct Plan {
    /// Proxy rules (profile's, then the flags').
    pub proxy: ProxyArgs,
    /// `None`: every loopback port; otherwise these (the proxy's port is
    /// added when the proxy starts).
    pub loopback_ports: Option<Vec<u16>>,
    /// Filesystem rules for Landlock; `None` without a profile or fs flags.
    pub fs: Option<FsRules>,
    /// Environment handling.
    pub env: EnvPolicy,
    /// Run as this user.
    pub user: Option<String>,
    /// Daemon sockets the sandbox may connect to.
    pub allow_unix_sockets: Vec<PathBuf>,
}

/// Builds the plan. Filesystem flags without `--profile` start from the
/// built-in `default` profile, so that `--write DIR` alone does not mean
/// "nothing else is readable".
pub fn build(args: &ExecArgs) -> Result<Plan> {
    let wants_fs = !args.read.is_empty() || !args.write.is_empty() || !args.exec.is_empty();
    let spec = match (&args.profile, wants_fs) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => Some("default".to_string()),
        (None, false) => None,
    };
    let profile: Option<ResolvedProfile> = match &spec {
        Some(s) => {
            let ctx = ExpandContext::from_env();
            let p = profile::load(s, &ctx)
                .map_err(anyhow::Error::new)
                .with_context(|| format!("profile {s}"))?;
            if let Some(file) = profile::shadowed_builtin(&p) {
                eprintln!("nono-agent: WARNING: profile {s:?} is {file}, not the built-in profile of that name");
            }
            Some(p)
        }
        None => None,
    };
    let mut proxy = args.proxy.clone();
    let mut loopback_ports = None;
    let mut fs = None;
    let mut env = EnvPolicy::Inherit;
    let mut user = None;
    let mut allow_unix_sockets = Vec::new();
    if let Some(p) = &profile {
        let n = &p.network;
        proxy.allow_domain = [n.allow_domains.clone(), proxy.allow_domain].concat();
        proxy.deny_domain = [n.deny_domains.clone(), proxy.deny_domain].concat();
        proxy.allow_cidr = [n.allow_cidrs.clone(), proxy.allow_cidr].concat();
        proxy.resolve = [n.resolve.clone(), proxy.resolve].concat();
        if proxy.upstream_proxy.is_none() {
            proxy.upstream_proxy = n.upstream_proxy.clone();
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
    if !args.loopback_ports.is_empty() {
        let mut ports = loopback_ports.unwrap_or_default();
        ports.extend(&args.loopback_ports);
        loopback_ports = Some(ports);
    }
    if let Some(f) = fs.as_mut() {
        f.read.extend(args.read.iter().cloned());
        f.write.extend(args.write.iter().cloned());
        f.exec.extend(args.exec.iter().cloned());
    }
    if args.user.is_some() {
        user = args.user.clone();
    }
    allow_unix_sockets.extend(args.allow_unix_sockets.iter().cloned());
    Ok(Plan {
        proxy,
        loopback_ports,
        fs,
        env,
        user,
        allow_unix_sockets,
    })
}

/// The environment the command starts with under `env`.
pub fn environment(env: &EnvPolicy) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
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
