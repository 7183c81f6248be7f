//! `learn`: from the events of one audited run to a profile that lets
//! exactly that through. Pure: events in, TOML text out (the command in
//! `commands::learn` runs the audit and writes the file).
//!
//! The child controls every name, port and address in those events, so
//! nothing it sends is trusted: names must be host names as the proxy
//! itself normalises them (anything else is dropped and counted), every
//! value is written through TOML's own string quoting, addresses no rule
//! can open are never learned, and the profile only ever *adds* allow rules
//! on top of `extends = BASE` (never a deny rule, never `loopback = "any"`
//! where BASE narrows it, never an upstream proxy or pins).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use nono_proxy::{CidrRule, DomainRule, Target};

use crate::events::WOULD_DENY;

/// At most this many entries are written per list: a child that asks for a
/// million distinct names gets a warning, not a million-line profile.
pub const MAX_ENTRIES: usize = 1000;

/// What one audited run needed beyond its base, with how often.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observations {
    /// Host names asked of the proxy, by (name, port).
    pub names: BTreeMap<(String, u16), u64>,
    /// IP literals asked of the proxy, and resolved addresses in ranges
    /// that need `allow_cidrs`, by (address, port).
    pub addresses: BTreeMap<(IpAddr, u16), u64>,
    /// Loopback ports the command connected or sent to.
    pub loopback_ports: BTreeMap<u16, u64>,
    /// Destinations reached directly, not through the proxy (a profile
    /// cannot allow them: they are listed as comments).
    pub direct: BTreeMap<(String, IpAddr, u16), u64>,
    /// Names a deny rule of the base refuses (a profile that extends it
    /// cannot allow them).
    pub denied_by_base: BTreeMap<(String, u16), u64>,
    /// Records that were not learned because they were malformed or named
    /// something that is not a host name.
    pub rejected: u64,
    /// Records not kept because a list already held [`MAX_OBSERVED`]
    /// distinct entries.
    pub dropped: u64,
}

/// Distinct entries kept per list while observing: a command that asks for
/// millions of names cannot grow the agent without bound.
pub const MAX_OBSERVED: usize = 65536;

/// Counts `key` in `map` unless the map is full of other keys.
fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, dropped: &mut u64) {
    if map.len() >= MAX_OBSERVED && !map.contains_key(&key) {
        *dropped += 1;
        return;
    }
    *map.entry(key).or_default() += 1;
}

impl Observations {
    /// Takes one event line (any verdict; only would-deny ones teach
    /// anything).
    pub fn observe(&mut self, ev: &Value) {
        if ev.get("verdict").and_then(Value::as_str) != Some(WOULD_DENY) {
            return;
        }
        let ok = match ev.get("source").and_then(Value::as_str) {
            Some("proxy") => self.observe_proxy(ev),
            Some("bpf") | Some("seccomp") => self.observe_kernel(ev),
            // Learned from the watch itself (`filesystem`), not its events.
            Some("filesystem") => true,
            _ => false,
        };
        if !ok {
            self.rejected += 1;
        }
    }

    fn observe_proxy(&mut self, ev: &Value) -> bool {
        let Some(port) = port_of(ev) else {
            return false;
        };
        // A resolved address outside the public ranges: the address needs a
        // CIDR rule (the name itself has its own event if it needs one).
        if let Some(addr) = ev.get("addr").and_then(Value::as_str) {
            return match addr.parse::<IpAddr>() {
                Ok(ip) if learnable_ip(ip) => {
                    bump(&mut self.addresses, (ip, port), &mut self.dropped);
                    true
                }
                _ => false,
            };
        }
        let Some(host) = ev.get("host").and_then(Value::as_str) else {
            return false;
        };
        match Target::parse(host) {
            Ok(Target::Ip(ip)) if learnable_ip(ip) => {
                bump(&mut self.addresses, (ip, port), &mut self.dropped);
                true
            }
            Ok(Target::Name(name)) if name == host && rule_for(&name, port).is_some() => {
                let denied = ev
                    .get("rule")
                    .and_then(|r| r.get("kind"))
                    .and_then(Value::as_str)
                    == Some("deny-domain");
                let into = if denied {
                    &mut self.denied_by_base
                } else {
                    &mut self.names
                };
                bump(into, (name, port), &mut self.dropped);
                true
            }
            _ => false,
        }
    }

    fn observe_kernel(&mut self, ev: &Value) -> bool {
        let Some(hook) = ev.get("hook").and_then(Value::as_str) else {
            return false;
        };
        let Some(ip) = ev
            .get("addr")
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<IpAddr>().ok())
        else {
            return false;
        };
        let Some(port) = ev.get("port").and_then(Value::as_u64) else {
            return false;
        };
        let Ok(port) = u16::try_from(port) else {
            return false;
        };
        if hook.starts_with("bind") || hook == "listen" {
            // A bind to a real interface's address: nothing a profile says.
            let kind = format!("{hook} to");
            bump(&mut self.direct, (kind, ip, port), &mut self.dropped);
            return true;
        }
        let reason = ev.get("reason").and_then(Value::as_str).unwrap_or("");
        if reason == nono_common::Reason::LoopbackPort.name() && port != 0 {
            bump(&mut self.loopback_ports, port, &mut self.dropped);
            return true;
        }
        if nono_common::never_allowed(&canonical16(ip)).is_some() {
            return false;
        }
        let kind = match ev.get("sock_type").and_then(Value::as_str) {
            Some("dgram") => "udp to",
            Some("stream") => "tcp to",
            _ => "to",
        };
        bump(
            &mut self.direct,
            (kind.to_string(), ip, port),
            &mut self.dropped,
        );
        true
    }
}

fn port_of(ev: &Value) -> Option<u16> {
    let p = ev.get("port").and_then(Value::as_u64)?;
    u16::try_from(p).ok().filter(|&p| p != 0)
}

fn canonical16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An address a CIDR rule may name: never link-local, metadata, multicast,
/// broadcast or unspecified (`nono_common::never_allowed`, which also
/// judges v4-mapped, v4-compatible and NAT64 forms as their IPv4).
fn learnable_ip(ip: IpAddr) -> bool {
    nono_common::never_allowed(&canonical16(ip)).is_none()
}

/// The rule text for a name on a port (80 and 443 are a rule's default),
/// if it parses as a rule (it always should for a normalised name).
fn rule_for(name: &str, port: u16) -> Option<String> {
    let text = if port == 80 || port == 443 {
        name.to_string()
    } else {
        format!("{name}:{port}")
    };
    text.parse::<DomainRule>().ok().map(|_| text)
}

/// What the learned profile extends and what the learn command line
/// added (rules given as flags are written too, so that the profile alone
/// lets the same run through).
#[derive(Debug, Default, Clone)]
pub struct Base {
    /// The `extends` value: a profile name, or an absolute path.
    pub extends: String,
    /// The base's loopback ports when it narrows loopback (`None`: any).
    pub loopback_ports: Option<Vec<u16>>,
    /// `--allow-domain` values of the learn command line.
    pub flag_domains: Vec<String>,
    /// `--allow-cidr` values of the learn command line.
    pub flag_cidrs: Vec<String>,
    /// `--loopback-port` values of the learn command line.
    pub flag_loopback_ports: Vec<u16>,
    /// `--read`, `--write`, `--exec` values of the learn command line.
    pub flag_fs: crate::profile::FsPolicy,
}

/// How the filesystem part of the run was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filesystem {
    /// Not observed; the sentence says why.
    Unavailable(String),
    /// Paths read and written outside the base, with counts.
    Learned {
        /// Paths read (or executed) outside the base, with how many
        /// processes opened them.
        read: BTreeMap<String, u64>,
        /// Paths written outside the base (with processes, as `read`).
        write: BTreeMap<String, u64>,
        /// Paths not learned because a profile could not name them safely.
        rejected: u64,
        /// Filesystems that could not be watched.
        unmarked: Vec<String>,
    },
}

/// Directories a learned write rule never names (the file written is
/// named instead): write access to all of them would be far more than one
/// file written there needs.
const TOO_BROAD: &[&str] = &[
    "/", "/bin", "/boot", "/etc", "/home", "/lib", "/lib32", "/lib64", "/opt", "/root", "/run",
    "/sbin", "/srv", "/usr", "/var", "/var/lib",
];

/// Paths a profile never names: pseudo filesystems (refused as write rules
/// anyway, and covered by the base where they matter).
const NEVER_LEARNED: &[&str] = &["/proc", "/sys", "/dev"];

/// The filesystem part of a profile from what the run opened and wrote
/// (`sandbox::fswatch::Seen`): paths the base does not already cover. A
/// file read is learned as itself; a file written as its directory (new
/// files need the directory's rights, and a rule on a file that does not
/// exist yet is skipped), unless that directory is `$HOME` or a system
/// directory, then as the file. The child chooses file names, so a path
/// that is not UTF-8, holds a control character or a `$` (which profile
/// expansion would read as a variable) is not learned, only counted.
pub fn filesystem(
    read: &BTreeMap<PathBuf, u64>,
    write: &BTreeMap<PathBuf, u64>,
    base: &crate::profile::FsPolicy,
    home: Option<&Path>,
    unmarked: Vec<String>,
) -> Filesystem {
    let covered = |p: &Path, rules: &[&Vec<PathBuf>]| {
        rules.iter().any(|r| r.iter().any(|b| p.starts_with(b)))
    };
    let nameable = |p: &Path| -> Option<String> {
        let s = p.to_str()?;
        let ok = p.is_absolute()
            && !s.contains('$')
            && !s.chars().any(char::is_control)
            && !NEVER_LEARNED.iter().any(|n| p.starts_with(n));
        ok.then(|| s.to_string())
    };
    let mut rejected = 0u64;
    let mut w: BTreeMap<String, u64> = BTreeMap::new();
    for (p, n) in write {
        if covered(p, &[&base.write]) {
            continue;
        }
        let dir = p.parent().unwrap_or(p);
        let broad = TOO_BROAD.iter().any(|b| dir == Path::new(b)) || Some(dir) == home;
        let target = if broad { p.as_path() } else { dir };
        match nameable(target) {
            Some(s) => *w.entry(s).or_default() += n,
            None => rejected += 1,
        }
    }
    let mut r: BTreeMap<String, u64> = BTreeMap::new();
    for (p, n) in read {
        if covered(p, &[&base.read, &base.write, &base.exec]) {
            continue;
        }
        // Listing `/`, `$HOME` or a system directory (shells and `ls` open
        // their working directory): a rule there would grant reading all
        // beneath it. Not learned.
        if TOO_BROAD.iter().any(|b| p == Path::new(b)) || Some(p.as_path()) == home {
            rejected += 1;
            continue;
        }
        // Written there too: the write rule covers reading.
        if w.keys().any(|d| p.starts_with(d)) {
            continue;
        }
        match nameable(p) {
            Some(s) => *r.entry(s).or_default() += n,
            None => rejected += 1,
        }
    }
    Filesystem::Learned {
        read: r,
        write: w,
        rejected,
        unmarked,
    }
}

/// A domain entry after collapsing: the rule text, how often it was seen,
/// and the names it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEntry {
    pub rule: String,
    pub count: u64,
    pub names: Vec<String>,
}

/// Collapses several subdomains of one registrable domain (Public Suffix
/// List) on one port into `*.REGISTRABLE[:PORT]`; the registrable domain
/// itself, names that are public suffixes, and lone subdomains stay exact.
/// `*.` is never put in front of a public suffix: the registrable domain
/// has one label more than its suffix.
pub fn collapse(names: &BTreeMap<(String, u16), u64>) -> Vec<DomainEntry> {
    // (registrable, port) -> subdomains seen
    let mut groups: BTreeMap<(String, u16), Vec<(&str, u64)>> = BTreeMap::new();
    let mut exact: Vec<(String, u16, u64)> = Vec::new();
    for ((name, port), &n) in names {
        match psl::domain_str(name) {
            Some(reg) if reg != name => groups
                .entry((reg.to_string(), default_class(*port)))
                .or_default()
                .push((name, n)),
            _ => exact.push((name.clone(), *port, n)),
        }
    }
    let mut out: BTreeMap<String, DomainEntry> = BTreeMap::new();
    let mut add = |rule: String, count: u64, names: Vec<String>| {
        let e = out.entry(rule.clone()).or_insert(DomainEntry {
            rule,
            count: 0,
            names: Vec::new(),
        });
        e.count += count;
        e.names.extend(names);
        e.names.sort();
        e.names.dedup();
    };
    for ((reg, port), subs) in groups {
        let distinct: BTreeSet<&str> = subs.iter().map(|(s, _)| *s).collect();
        if distinct.len() >= 2 {
            let wildcard = format!("*.{reg}");
            if let Some(rule) = rule_for(&wildcard, port) {
                let total = subs.iter().map(|(_, n)| n).sum();
                add(
                    rule,
                    total,
                    distinct.iter().map(|s| s.to_string()).collect(),
                );
                continue;
            }
        }
        for (s, n) in subs {
            if let Some(rule) = rule_for(s, port) {
                add(rule, n, vec![s.to_string()]);
            }
        }
    }
    for (name, port, n) in exact {
        if let Some(rule) = rule_for(&name, port) {
            add(rule, n, vec![name]);
        }
    }
    out.into_values().collect()
}

/// 80 and 443 are one class (a rule without a port covers both).
fn default_class(port: u16) -> u16 {
    if port == 443 {
        80
    } else {
        port
    }
}

/// A TOML basic string for `s` (quoted and escaped by the TOML library, so
/// no value can end the string or the line).
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn times(n: u64) -> String {
    if n == 1 {
        "seen once".to_string()
    } else {
        format!("seen {n} times")
    }
}

/// How many processes opened a path (see `sandbox::fswatch::Seen`).
fn processes(n: u64) -> String {
    if n == 1 {
        "opened by 1 process".to_string()
    } else {
        format!("opened by {n} processes")
    }
}

/// The profile text. Sorted and stable: the same observations give the
/// same bytes.
pub fn render(base: &Base, obs: &Observations, fs: &Filesystem) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `nono-agent learn` from one audited run: what the command needed\n\
         # beyond its base profile, each entry with how often the run needed it.\n\
         # Review it before use; run with it as `nono-agent exec --profile FILE -- ...`."
    );
    let _ = writeln!(t, "extends = {}", quoted(&base.extends));
    let _ = writeln!(
        t,
        "description = {}",
        quoted(&format!(
            "learned from an audited run (base: {})",
            base.extends
        ))
    );
    let _ = writeln!(t);
    let _ = writeln!(t, "[network]");

    let domains = collapse(&obs.names);
    let mut lines: Vec<(String, String)> = base
        .flag_domains
        .iter()
        .map(|d| (quoted(d), "given on the learn command line".to_string()))
        .collect();
    for e in &domains {
        let mut c = times(e.count);
        if e.rule.starts_with("*.") {
            let _ = write!(c, ": {}", e.names.join(", "));
        }
        lines.push((quoted(&e.rule), c));
    }
    list(&mut t, "allow_domains", &lines);

    let mut lines: Vec<(String, String)> = base
        .flag_cidrs
        .iter()
        .map(|c| (quoted(c), "given on the learn command line".to_string()))
        .collect();
    for ((ip, port), n) in &obs.addresses {
        let text = match ip {
            IpAddr::V4(v4) => format!("{v4}/32:{port}"),
            IpAddr::V6(v6) => format!("[{v6}/128]:{port}"),
        };
        if text.parse::<CidrRule>().is_ok() {
            lines.push((quoted(&text), times(*n)));
        }
    }
    list(&mut t, "allow_cidrs", &lines);

    // Loopback: only where the base (or the learn command line) narrows
    // it; the list is the base's ports plus what was needed, never "any".
    let narrowed = base.loopback_ports.is_some() || !base.flag_loopback_ports.is_empty();
    if narrowed {
        let mut ports: BTreeMap<u16, String> = BTreeMap::new();
        for p in base.loopback_ports.iter().flatten() {
            ports.insert(*p, "from the base profile".into());
        }
        for p in &base.flag_loopback_ports {
            ports
                .entry(*p)
                .or_insert_with(|| "given on the learn command line".into());
        }
        for (p, n) in &obs.loopback_ports {
            ports.entry(*p).or_insert_with(|| times(*n));
        }
        let lines: Vec<(String, String)> =
            ports.into_iter().map(|(p, c)| (p.to_string(), c)).collect();
        list(&mut t, "loopback", &lines);
    } else if !obs.loopback_ports.is_empty() {
        let _ = writeln!(t, "# loopback: the base allows every loopback port");
    }

    let notes: Vec<String> = obs
        .direct
        .iter()
        .map(|((kind, ip, port), n)| {
            let dest = match ip {
                IpAddr::V4(v4) => format!("{v4}:{port}"),
                IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            };
            format!("{kind} {dest} ({})", times(*n))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(
            t,
            "# Not learned: reached directly, not through the proxy (a profile cannot allow\n\
             # that; `exec --proxy-endpoint ADDR:PORT` can, if it must):"
        );
        for n in notes.iter().take(MAX_ENTRIES) {
            let _ = writeln!(t, "#   {n}");
        }
    }
    if !obs.denied_by_base.is_empty() {
        let _ = writeln!(
            t,
            "# Not learned: refused by a deny_domains rule of the base (deny rules win):"
        );
        for ((name, port), n) in obs.denied_by_base.iter().take(MAX_ENTRIES) {
            let _ = writeln!(t, "#   {name}:{port} ({})", times(*n));
        }
    }
    if obs.dropped > 0 {
        let _ = writeln!(
            t,
            "# Not learned: {} record(s) past {MAX_OBSERVED} distinct entries in one list",
            obs.dropped
        );
    }
    if obs.rejected > 0 {
        let _ = writeln!(
            t,
            "# Not learned: {} record(s) naming something that is not a valid host name or address",
            obs.rejected
        );
    }

    let _ = writeln!(t);
    let _ = writeln!(t, "[filesystem]");
    let flag = |paths: &[PathBuf]| -> Vec<(String, String)> {
        paths
            .iter()
            .filter_map(|p| p.to_str())
            .map(|p| (quoted(p), "given on the learn command line".to_string()))
            .collect()
    };
    let (mut fr, mut fw, fx) = (
        flag(&base.flag_fs.read),
        flag(&base.flag_fs.write),
        flag(&base.flag_fs.exec),
    );
    match fs {
        Filesystem::Unavailable(why) => {
            for l in why.lines() {
                let l: String = l.chars().filter(|c| !c.is_control()).collect();
                let _ = writeln!(t, "# Filesystem learning was not available: {l}");
            }
            let _ = writeln!(t, "# The base profile's paths apply unchanged.");
        }
        Filesystem::Learned {
            read,
            write,
            rejected,
            unmarked,
        } => {
            let _ = writeln!(
                t,
                "# Files the run opened outside the base (reads: each file; writes: the\n\
                 # directory written in). Paths that do not exist when a sandbox starts\n\
                 # are skipped."
            );
            fr.extend(read.iter().map(|(p, n)| (quoted(p), processes(*n))));
            fw.extend(write.iter().map(|(p, n)| (quoted(p), processes(*n))));
            if *rejected > 0 {
                let _ = writeln!(
                    t,
                    "# Not learned: {rejected} path(s) a profile cannot name safely (not UTF-8, \
                     control characters, '$', /proc, /sys, /dev, or listing $HOME or a system \
                     directory)"
                );
            }
            for u in unmarked {
                let u: String = u.chars().filter(|c| !c.is_control()).collect();
                let _ = writeln!(t, "# Not watched: {u}");
            }
        }
    }
    list(&mut t, "read", &fr);
    list(&mut t, "write", &fw);
    list(&mut t, "exec", &fx);
    t
}

/// `key = [ value, # comment ... ]`, at most [`MAX_ENTRIES`] entries (the
/// rest counted in a comment); nothing when empty.
fn list(t: &mut String, key: &str, lines: &[(String, String)]) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(t, "{key} = [");
    for (v, c) in lines.iter().take(MAX_ENTRIES) {
        // Comments hold only counts and names that passed the host-name
        // check; a line break in one would still be cut here.
        let c: String = c.chars().filter(|ch| !ch.is_control()).collect();
        let _ = writeln!(t, "    {v},  # {c}");
    }
    if lines.len() > MAX_ENTRIES {
        let _ = writeln!(
            t,
            "    # {} more not written (at most {MAX_ENTRIES} entries)",
            lines.len() - MAX_ENTRIES
        );
    }
    let _ = writeln!(t, "]");
}

#[cfg(test)]
mod tests;
