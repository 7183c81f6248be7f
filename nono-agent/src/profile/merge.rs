//! Layering profiles: following `extends` and merging each child over its
//! parents (see [`merge`] for the rules).

use std::path::PathBuf;

use nono_proxy::{CidrRule, DomainRule, Pin, Upstream};

use super::lookup::{is_path_spec, locate_name, locate_path, Found, Tier};
use super::*;

/// Follows `extends` from `start` to the base, then merges base first.
pub(super) fn resolve_chain(
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
            transparent: merged.transparent.unwrap_or(false),
            resolve: merged.resolve,
            allow_unix_sockets: merged.allow_unix_sockets,
            credentials: merged.credentials,
            upstream_ca: merged.upstream_ca,
        },
        filesystem: merged.fs,
        process: ProcessPolicy {
            env: merged.env.unwrap_or(EnvPolicy::Inherit),
            user: merged.user,
        },
        origins: merged.origins,
    })
}

/// The accumulated result of merging layers, base first.
#[derive(Debug, Default)]
pub(super) struct Merged {
    description: Option<String>,
    allow_domains: Vec<DomainRule>,
    deny_domains: Vec<DomainRule>,
    allow_cidrs: Vec<CidrRule>,
    loopback: Option<Loopback>,
    upstream_proxy: Option<Upstream>,
    transparent: Option<bool>,
    resolve: Vec<Pin>,
    allow_unix_sockets: Vec<PathBuf>,
    fs: FsPolicy,
    env: Option<EnvPolicy>,
    user: Option<String>,
    origins: Provenance,
    credentials: Vec<(nono_proxy::mitm::CredentialSpec, Location)>,
    upstream_ca: Option<PathBuf>,
}

/// Appends the items not already present (by `same`), keeping the first
/// occurrence's position: parents come first in the result.
pub(super) fn append_unique<T>(into: &mut Vec<T>, items: Vec<T>, same: impl Fn(&T, &T) -> bool) {
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
/// - Scalars (`description`, `loopback`, `upstream_proxy`, `transparent`,
///   `env`, `user`)
///   are replaced when the child sets them; a child can thus also widen
///   `loopback` back to `"any"`.
/// - `deny_domains` of every level are kept; the proxy checks them before
///   any allow rule, so deny wins whichever level allowed the host.
pub(super) fn merge(m: &mut Merged, l: raw::Layer) {
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
    if l.transparent.is_some() {
        m.transparent = l.transparent;
    }
    if l.env.is_some() {
        m.env = l.env;
    }
    if l.user.is_some() {
        m.user = l.user;
    }
    // A child's credential for the same host, port and header replaces
    // the parent's (one header holds one value).
    for (c, at) in l.credentials {
        m.credentials
            .retain(|(o, _)| !(o.host == c.host && o.port == c.port && o.header == c.header));
        m.credentials.push((c, at));
    }
    if l.upstream_ca.is_some() {
        m.upstream_ca = l.upstream_ca;
    }
    // The first file that wrote a rule is the one merging kept.
    for o in l.origins.fs {
        if !m.origins.fs.iter().any(|x| x.0 == o.0 && x.1 == o.1) {
            m.origins.fs.push(o);
        }
    }
    if l.origins.loopback.is_some() {
        m.origins.loopback = l.origins.loopback;
    }
}
