//! Turning BPF denial records into JSON lines and the exit summary.

use nono_common::{consts, DenyEvent, Hook, Reason};
use nono_proxy::{EventSink, ProxyEvent};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

/// One event ready to be written: its JSON line and what the summary counts.
#[derive(Debug)]
pub struct Line {
    /// Summary bucket (hook name, or "proxy").
    pub key: &'static str,
    /// Whether it is a denial (only denials are counted in the summary).
    pub deny: bool,
    /// Whether it is an audit record: refused by the policy, let through
    /// (counted apart in the summary).
    pub would_deny: bool,
    /// The JSON object, without newline.
    pub json: Vec<u8>,
    /// For a denial: the notice text (`denied connect to ...`), unescaped
    /// ([`crate::notice`] escapes it).
    pub notice: Option<String>,
}

/// Whether `path` is the agent's own stdout or stderr, which the command
/// inherits: `-`, or a path naming the same open file (`/dev/stdout`,
/// `/proc/self/fd/1`, the file stdout is redirected to). Returns which.
pub fn is_command_output(path: &std::path::Path) -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt as _;
    if path.as_os_str() == "-" {
        return Some("stdout");
    }
    let target = std::fs::metadata(path).ok()?;
    [(1, "stdout"), (2, "stderr")]
        .into_iter()
        .find_map(|(fd, name)| {
            // SAFETY: fstat into a zeroed stat of our own; a closed fd
            // just fails.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
            (ok && st.st_dev == target.dev() && st.st_ino == target.ino()).then_some(name)
        })
}

/// The verdict of an audit record: refused by the policy, let through
/// because the sandbox runs in audit mode.
pub const WOULD_DENY: &str = "would-deny";

/// Where concurrent producers (the proxy) send events.
pub type EventTx = tokio::sync::mpsc::UnboundedSender<Line>;

/// A proxy decision as written to `--events`.
#[derive(Debug, Serialize)]
pub struct ProxyRecord {
    /// "connect" (tunnel) or "http" (forwarded request).
    #[serde(rename = "hook")]
    pub kind: &'static str,
    /// "allow" or "deny".
    pub verdict: &'static str,
    /// Why refused, or how the allowed exchange ended.
    pub reason: String,
    /// Requested host (normalised) or IP literal.
    pub host: String,
    /// Requested port.
    pub port: u16,
    /// Address actually connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    /// Transparent mode: the address the client dialled (the proxy never
    /// connects to it; `addr` is where it connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dialled: Option<IpAddr>,
    /// Bytes from the sandbox to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the sandbox.
    pub bytes_down: u64,
    /// Time from request to end of exchange.
    pub duration_ms: u64,
    /// The rule that allowed the request (or the deny rule that refused
    /// it); absent when no rule decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRecord>,
    /// Credential injection (hook `inject`): which credential, by name
    /// (`env:NAME`, `file:PATH`; never the value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// Credential injection: the request's method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Credential injection: the request's path (no query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Credential injection: the upstream's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// A proxy rule in an event: which kind, as written, and where.
#[derive(Debug, Serialize)]
pub struct RuleRecord {
    /// "allow-domain", "deny-domain" or "allow-cidr".
    pub kind: &'static str,
    /// The rule as written.
    pub text: String,
    /// "command line", or the profile's `FILE:LINE:COLUMN`.
    pub origin: String,
}

impl From<&ProxyEvent> for ProxyRecord {
    fn from(e: &ProxyEvent) -> Self {
        Self {
            kind: e.hook.name(),
            verdict: e.verdict.name(),
            reason: e.reason.to_string(),
            host: e.host.clone(),
            port: e.port,
            addr: e.addr,
            dialled: e.dialled,
            bytes_up: e.bytes_up,
            bytes_down: e.bytes_down,
            duration_ms: e.duration.as_millis() as u64,
            rule: e.rule.as_ref().map(|r| RuleRecord {
                kind: r.kind(),
                text: r.text().to_string(),
                origin: r.origin().to_string(),
            }),
            credential: e.reason.exchange().map(|x| x.credential.clone()),
            method: e.reason.exchange().map(|x| x.method.clone()),
            path: e.reason.exchange().map(|x| x.path.clone()),
            status: e.reason.exchange().and_then(|x| x.status),
        }
    }
}

#[derive(Serialize)]
struct ProxyEnvelope<'a> {
    ts: String,
    sandbox: &'a str,
    source: &'static str,
    #[serde(flatten)]
    record: &'a ProxyRecord,
}

impl ProxyRecord {
    /// The event line for this record, stamped `now`.
    pub fn into_line(self, sandbox: &str, now: SystemTime) -> Line {
        let env = ProxyEnvelope {
            ts: humantime::format_rfc3339_micros(now).to_string(),
            sandbox,
            source: "proxy",
            record: &self,
        };
        Line {
            key: "proxy",
            deny: self.verdict == "deny",
            would_deny: self.verdict == WOULD_DENY,
            json: serde_json::to_vec(&env).unwrap_or_default(),
            notice: None,
        }
    }
}

/// Sends the proxy's events, as lines, to the agent's event channel (which
/// the seccomp supervisor shares), so they are written and counted in the
/// order they happen.
pub struct ProxySink {
    tx: EventTx,
    allowed: bool,
}

impl ProxySink {
    /// Events go to `tx`. `allowed`: whether anything reads the events of
    /// what the proxy let through ([`Output::takes_allowed`]); when nothing
    /// does, they are not made at all (the summary and the notices count
    /// refusals only). A proxied request's event costs a JSON line and a
    /// wake-up of the agent's main task, on every request.
    pub fn new(tx: EventTx, allowed: bool) -> Self {
        Self { tx, allowed }
    }
}

impl EventSink for ProxySink {
    fn record(&self, event: ProxyEvent) {
        if !self.allowed && event.verdict == nono_proxy::Verdict::Allow {
            return;
        }
        let mut line = ProxyRecord::from(&event).into_line(&event.sandbox, SystemTime::now());
        line.notice = proxy_notice(&event);
        // A closed channel: the agent is past writing events.
        let _ = self.tx.send(line);
    }
}

/// The notice of a proxy denial: `denied CONNECT evil.example:443 (not in
/// allowlist)`.
pub fn proxy_notice(e: &ProxyEvent) -> Option<String> {
    use nono_proxy::{Reason as R, Refusal};
    if e.verdict != nono_proxy::Verdict::Deny {
        return None;
    }
    let verb = match e.hook {
        nono_proxy::Hook::Connect => "CONNECT",
        nono_proxy::Hook::Http => "HTTP request to",
        nono_proxy::Hook::Transparent => "redirected connection to",
        nono_proxy::Hook::Inject => "credential request to",
        nono_proxy::Hook::Dns => "DNS question for",
    };
    let reason = match &e.reason {
        R::Refused(Refusal::NotAllowed { .. }) => "not in allowlist".to_string(),
        R::Refused(Refusal::IpNotCovered { .. }) => "IP address not in allowlist".to_string(),
        R::Refused(Refusal::Denied { rule, .. }) => format!("deny-domain {}", rule.text),
        R::Refused(Refusal::CidrDenied { rule, .. }) => format!("deny-cidr {}", rule.text),
        R::Refused(Refusal::Never { range, .. }) => (*range).to_string(),
        R::Refused(Refusal::Private { range, .. }) => format!("{range} without allow-cidr"),
        other => other.to_string(),
    };
    let dest = if e.host.contains(':') && !e.host.starts_with('[') {
        format!("[{}]:{}", e.host, e.port)
    } else {
        format!("{}:{}", e.host, e.port)
    };
    Some(crate::notice::text(verb, Some(&dest), &reason))
}

impl EventRecord {
    /// The event line for this record.
    pub fn into_line(self) -> Line {
        let dest = match (&self.addr, self.port) {
            (Some(a), Some(p)) if a.contains(':') => Some(format!("[{a}]:{p}")),
            (Some(a), Some(p)) => Some(format!("{a}:{p}")),
            _ => None,
        };
        let what = match (self.hook, &self.family, &self.sock_type, self.level) {
            ("sock_create" | "socket" | "socketpair", f, t, _) => Some(format!(
                "{}/{}/{}",
                f.as_deref().unwrap_or("?"),
                t.as_deref().unwrap_or("?"),
                self.protocol.unwrap_or(0)
            )),
            ("setsockopt", _, _, Some(level)) => {
                Some(format!("{level}/{}", self.optname.unwrap_or(0)))
            }
            _ => None,
        };
        let notice = crate::notice::text(
            crate::notice::hook_verb(self.hook),
            dest.as_deref().or(what.as_deref()),
            crate::notice::reason_text(self.reason),
        );
        Line {
            key: self.hook,
            deny: self.verdict == "deny",
            would_deny: self.verdict == WOULD_DENY,
            json: serde_json::to_vec(&self).unwrap_or_default(),
            notice: Some(notice),
        }
    }
}

/// One event as written to `--events` (one JSON object per line).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EventRecord {
    /// RFC 3339 time the agent read the event.
    pub ts: String,
    /// Sandbox id.
    pub sandbox: String,
    /// Which enforcer produced it ("bpf" or "seccomp").
    pub source: &'static str,
    /// Enforcement point.
    pub hook: &'static str,
    /// "deny", or "would-deny" in audit mode (allows are not reported).
    pub verdict: &'static str,
    /// Why.
    pub reason: &'static str,
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock_type: Option<String>,
    /// Socket protocol, or for `egress` the packet's IP protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// `setsockopt` level and option name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optname: Option<i32>,
    /// Destination address (v4 and v4-mapped shown as dotted quad); absent
    /// for socket-creation denials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Parses a raw ring-buffer record. `None` if it is truncated.
pub fn parse(bytes: &[u8]) -> Option<DenyEvent> {
    if bytes.len() < core::mem::size_of::<DenyEvent>() {
        return None;
    }
    // SAFETY: the length was checked; DenyEvent is plain old data for which
    // every bit pattern is valid; read_unaligned copes with any alignment.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<DenyEvent>()) })
}

/// The JSON record for an event.
pub fn record(ev: &DenyEvent, sandbox: &str, now: SystemTime) -> EventRecord {
    let hook = Hook::from_u32(ev.hook);
    let sockopt = hook == Some(Hook::Setsockopt);
    let has_dest = !matches!(hook, Some(Hook::SockCreate) | Some(Hook::Setsockopt));
    let has_type = !matches!(hook, Some(Hook::Egress) | Some(Hook::Setsockopt));
    EventRecord {
        ts: humantime::format_rfc3339_micros(now).to_string(),
        sandbox: sandbox.to_string(),
        source: "bpf",
        hook: hook.map(Hook::name).unwrap_or("unknown"),
        verdict: if ev.verdict == nono_common::EVENT_WOULD_DENY {
            WOULD_DENY
        } else {
            "deny"
        },
        reason: Reason::from_u32(ev.reason)
            .map(Reason::name)
            .unwrap_or("unknown"),
        pid: ev.pid,
        tgid: ev.tgid,
        comm: comm(&ev.comm),
        cgroup_id: ev.cgroup_id,
        family: (!sockopt).then(|| family_name(ev.family)),
        sock_type: has_type.then(|| type_name(ev.sock_type)),
        protocol: (!sockopt).then_some(ev.protocol),
        level: sockopt.then_some(ev.sock_type as i32),
        optname: sockopt.then_some(ev.protocol as i32),
        addr: has_dest.then(|| addr_string(&ev.addr)),
        port: has_dest.then_some(ev.port),
    }
}

fn comm(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// Canonical addresses are v6; show v4-mapped ones as plain v4.
pub fn addr_string(a: &[u8; 16]) -> String {
    crate::util::canonical_ip(*a).to_string()
}

/// Name of a socket family.
pub fn family_name(f: u32) -> String {
    match f {
        consts::AF_INET => "inet".into(),
        consts::AF_INET6 => "inet6".into(),
        other => other.to_string(),
    }
}

/// Name of a socket type.
pub fn type_name(t: u32) -> String {
    match t & consts::SOCK_TYPE_MASK {
        consts::SOCK_STREAM => "stream".into(),
        consts::SOCK_DGRAM => "dgram".into(),
        consts::SOCK_RAW => "raw".into(),
        other => other.to_string(),
    }
}

/// Where events are written (`--events`), plus the summary counts.
pub struct Output {
    sink: Sink,
    /// A second file (the host configuration's `[events] path`).
    extra: Option<std::fs::File>,
    /// Denials counted so far.
    pub summary: Summary,
    /// Denial notices on the terminal (`exec --notices`).
    notifier: Option<crate::notice::Notifier>,
    /// Sees every line as it is written (`learn`).
    observer: Option<Observer>,
}

/// What sees every event line ([`Output::observe_with`]).
pub type Observer = Box<dyn FnMut(&[u8]) + Send>;

/// Errors of the event output.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The `--events` file could not be opened for appending.
    #[error("opening events file {}", .path.display())]
    Open {
        /// The file.
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

enum Sink {
    None,
    Stdout,
    File(std::fs::File),
}

impl Output {
    /// Whether anything takes the event lines (a file, notices, an
    /// observer); the summary counts only what reaches [`Output::take`].
    pub fn has_readers(&self) -> bool {
        self.takes_allowed() || self.notifier.is_some()
    }

    /// Whether anything takes the lines of what was allowed (a file, an
    /// observer): notices and the summary are about refusals only.
    pub fn takes_allowed(&self) -> bool {
        !matches!(self.sink, Sink::None) || self.extra.is_some() || self.observer.is_some()
    }

    /// `None`: no file; `-`: stdout; otherwise append to the file.
    pub fn open(path: Option<&std::path::Path>) -> Result<Self, EventsError> {
        let sink = match path {
            None => Sink::None,
            Some(p) if p.as_os_str() == "-" => Sink::Stdout,
            Some(p) => Sink::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| EventsError::Open {
                        path: p.to_path_buf(),
                        source,
                    })?,
            ),
        };
        Ok(Self {
            sink,
            extra: None,
            summary: Summary::default(),
            notifier: None,
            observer: None,
        })
    }

    /// Hands every event line from now on (JSON, no newline) to `f`, as it
    /// is written: `learn` folds them into what it learns, so nothing
    /// grows with the number of events.
    pub fn observe_with(&mut self, f: Observer) {
        self.observer = Some(f);
    }

    /// Also appends every event to `path` (created 0640 if missing).
    pub fn add_file(&mut self, path: &std::path::Path) -> Result<(), EventsError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(|source| EventsError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        self.extra = Some(f);
        Ok(())
    }

    /// Prints a notice for each new denial from now on.
    pub fn set_notifier(&mut self, n: crate::notice::Notifier) {
        self.notifier = Some(n);
    }

    /// The notices' closing "N more" line, if any (before the summary).
    pub fn finish_notices(&mut self) {
        if let Some(n) = &mut self.notifier {
            n.finish();
        }
    }

    /// Writes and counts one event.
    pub fn take(&mut self, mut line: Line) {
        use std::io::Write as _;
        self.summary.count(&line);
        if let (Some(n), true, Some(text)) = (&mut self.notifier, line.deny, &line.notice) {
            n.offer(text);
        }
        if let Some(f) = &mut self.observer {
            f(&line.json);
        }
        line.json.push(b'\n');
        let _ = match &mut self.sink {
            Sink::None => Ok(()),
            Sink::Stdout => std::io::stdout().lock().write_all(&line.json),
            Sink::File(f) => f.write_all(&line.json),
        };
        if let Some(f) = &mut self.extra {
            let _ = f.write_all(&line.json);
        }
    }
}

/// Counts of denials per hook, for the exit summary.
#[derive(Debug, Default)]
pub struct Summary {
    by_hook: BTreeMap<&'static str, u64>,
    total: u64,
    /// Audit records: refusals let through.
    would_deny: u64,
    /// Events the kernel could not queue (ring buffer full).
    pub dropped: u64,
    /// How filesystem denials were reported (`None`: no filesystem rules).
    pub fs: Option<FsReport>,
}

/// Whether the filesystem denials in the summary are complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsReport {
    /// Read from the kernel's audit records (counted as `landlock`);
    /// `incomplete` when some may be missing.
    Listed {
        /// Some records may have been lost.
        incomplete: bool,
    },
    /// Not available here, and why.
    NotReported(String),
}

impl Summary {
    /// Counts a line if it is a denial.
    pub fn count(&mut self, line: &Line) {
        if line.deny {
            self.add(line.key);
        }
        if line.would_deny {
            self.would_deny += 1;
        }
    }

    /// Counts one denial.
    pub fn add(&mut self, hook: &'static str) {
        *self.by_hook.entry(hook).or_default() += 1;
        self.total += 1;
    }

    /// Total denials seen.
    pub fn total(&self) -> u64 {
        self.total + self.dropped
    }

    /// The one-line summary printed on stderr at exit; `audit`: the
    /// sandbox ran in audit mode (the would-deny count is added).
    pub fn line(&self, sandbox: &str, audit: bool) -> String {
        let audit_would_deny = audit.then_some(self.would_deny);
        let mut s = format!("nono-agent: sandbox {sandbox}: {} denied", self.total());
        if !self.by_hook.is_empty() || self.dropped > 0 {
            let mut parts: Vec<String> = self
                .by_hook
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            if self.dropped > 0 {
                parts.push(format!("not recorded (ring buffer full): {}", self.dropped));
            }
            s.push_str(&format!(" ({})", parts.join(", ")));
        }
        if let Some(n) = audit_would_deny {
            s.push_str(&format!("; audit: {n} would have been denied"));
        }
        s
    }

    /// The line about filesystem denials, if one is due.
    pub fn fs_line(&self, sandbox: &str) -> Option<String> {
        match &self.fs {
            None | Some(FsReport::Listed { incomplete: false }) => None,
            Some(FsReport::Listed { incomplete: true }) => Some(format!(
                "nono-agent: sandbox {sandbox}: some filesystem denials may be missing from the count (audit records were lost)"
            )),
            Some(FsReport::NotReported(why)) => Some(format!(
                "nono-agent: sandbox {sandbox}: filesystem denials are not reported (not counted above): {why}; \
                 `nono-agent why --path PATH` explains a \"Permission denied\""
            )),
        }
    }

    /// Audit records counted (refusals let through).
    pub fn would_deny(&self) -> u64 {
        self.would_deny
    }
}

/// Turns every record waiting in the BPF ring buffer into an event line.
pub fn drain_ring(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, id: &str, out: &mut Output) {
    while let Some(item) = ring.next() {
        take_raw(&item, id, out);
    }
}

/// One raw denial record (from our ring, or relayed by the daemon) as an
/// event line; malformed records are dropped.
pub fn take_raw(raw: &[u8], id: &str, out: &mut Output) {
    if let Some(ev) = parse(raw) {
        out.take(record(&ev, id, SystemTime::now()).into_line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nono_common::canonical_v4;

    #[test]
    fn the_agents_own_output_is_recognised() {
        assert_eq!(is_command_output(std::path::Path::new("-")), Some("stdout"));
        let f = std::env::temp_dir().join(format!("nono-events-{}", std::process::id()));
        std::fs::write(&f, b"").unwrap();
        assert_eq!(is_command_output(&f), None);
        std::fs::remove_file(&f).unwrap();
        // A path that does not exist yet is a new file of its own.
        assert_eq!(is_command_output(&f), None);
    }

    fn ev(hook: Hook, addr: [u8; 16], port: u16) -> DenyEvent {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        DenyEvent {
            pid: 10,
            tgid: 9,
            cgroup_id: 77,
            comm,
            hook: hook as u32,
            family: consts::AF_INET6,
            sock_type: consts::SOCK_STREAM,
            protocol: 6,
            addr,
            port,
            verdict: 0,
            reason: Reason::NotAllowed as u32,
        }
    }

    #[test]
    fn v4_mapped_destination_is_shown_as_v4() {
        let e = ev(Hook::Connect6, canonical_v4([198, 51, 100, 2]), 443);
        // SAFETY: DenyEvent is a plain repr(C) struct; its bytes are read
        // while it lives.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const DenyEvent).cast::<u8>(),
                std::mem::size_of::<DenyEvent>(),
            )
        };
        let parsed = parse(bytes).unwrap();
        let r = record(&parsed, "abc", SystemTime::UNIX_EPOCH);
        assert_eq!(r.addr.as_deref(), Some("198.51.100.2"));
        assert_eq!(r.port, Some(443));
        assert_eq!(r.hook, "connect6");
        assert_eq!(r.comm, "curl");
        assert_eq!(r.family.as_deref(), Some("inet6"));
        assert_eq!(r.ts, "1970-01-01T00:00:00.000000Z");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"reason\":\"not-allowed\""));
    }

    #[test]
    fn audit_records_are_would_deny_and_counted_apart() {
        let mut e = ev(Hook::Connect4, canonical_v4([198, 51, 100, 2]), 80);
        e.verdict = nono_common::EVENT_WOULD_DENY;
        let line = record(&e, "abc", SystemTime::UNIX_EPOCH).into_line();
        assert!(line.would_deny && !line.deny);
        assert!(String::from_utf8_lossy(&line.json).contains("\"verdict\":\"would-deny\""));
        let mut s = Summary::default();
        s.count(&line);
        assert_eq!(s.total(), 0);
        assert_eq!(s.would_deny(), 1);
        let plain = record(
            &ev(Hook::Connect4, [0; 16], 1),
            "abc",
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(plain.verdict, "deny");
    }

    #[test]
    fn sock_create_has_no_destination() {
        let r = record(&ev(Hook::SockCreate, [0; 16], 0), "abc", SystemTime::now());
        assert_eq!(r.addr, None);
        assert!(!serde_json::to_string(&r).unwrap().contains("addr"));
    }

    #[test]
    fn setsockopt_reports_level_and_option() {
        let mut e = ev(Hook::Setsockopt, [0; 16], 0);
        e.sock_type = 41;
        e.protocol = 57;
        let r = record(&e, "abc", SystemTime::now());
        assert_eq!((r.level, r.optname), (Some(41), Some(57)));
        assert_eq!(
            (r.family, r.sock_type, r.protocol, r.addr),
            (None, None, None, None)
        );
    }

    #[test]
    fn truncated_records_are_rejected() {
        assert!(parse(&[0u8; 10]).is_none());
    }

    fn proxy_event(verdict: nono_proxy::Verdict, reason: nono_proxy::Reason) -> ProxyEvent {
        ProxyEvent {
            sandbox: "abc".into(),
            hook: nono_proxy::Hook::Http,
            verdict,
            rule: reason.rule(),
            reason,
            host: "evil.test".into(),
            port: 80,
            addr: None,
            dialled: None,
            bytes_up: 0,
            bytes_down: 0,
            duration: std::time::Duration::from_micros(2500),
        }
    }

    /// Without anything reading allowed events, the proxy's sink makes no
    /// line for them; refusals and audit records always go through (the
    /// summary and the notices count them).
    #[test]
    fn allowed_proxy_events_are_made_only_for_a_reader() {
        use nono_proxy::{Reason, Refusal, Verdict};
        let refused = || {
            Reason::Refused(Refusal::NotAllowed {
                name: "evil.test".into(),
                port: 80,
            })
        };
        for readers in [false, true] {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let sink = ProxySink::new(tx, readers);
            sink.record(proxy_event(
                Verdict::Allow,
                Reason::Forwarded { status: 200 },
            ));
            sink.record(proxy_event(Verdict::Deny, refused()));
            sink.record(proxy_event(Verdict::WouldDeny, refused()));
            let mut verdicts = Vec::new();
            while let Ok(line) = rx.try_recv() {
                let v: serde_json::Value = serde_json::from_slice(&line.json).unwrap();
                verdicts.push(v["verdict"].as_str().unwrap().to_string());
            }
            let mut want = vec!["deny", "would-deny"];
            if readers {
                want.insert(0, "allow");
            }
            assert_eq!(verdicts, want, "readers: {readers}");
        }
        let out = Output::open(None).unwrap();
        assert!(!out.takes_allowed() && !out.has_readers());
    }

    /// The line of a refused request, byte for byte as the agent wrote it
    /// before the proxy became a crate of its own.
    #[test]
    fn proxy_denial_line_is_unchanged() {
        let refusal = nono_proxy::Refusal::NotAllowed {
            name: "evil.test".into(),
            port: 80,
        };
        let ev = proxy_event(
            nono_proxy::Verdict::Deny,
            nono_proxy::Reason::Refused(refusal),
        );
        let line = ProxyRecord::from(&ev).into_line(&ev.sandbox, SystemTime::UNIX_EPOCH);
        assert!(line.deny);
        assert_eq!(line.key, "proxy");
        assert_eq!(
            String::from_utf8(line.json).unwrap(),
            r#"{"ts":"1970-01-01T00:00:00.000000Z","sandbox":"abc","source":"proxy","hook":"http","verdict":"deny","reason":"evil.test:80 is not allowed by any allow-domain rule","host":"evil.test","port":80,"bytes_up":0,"bytes_down":0,"duration_ms":2}"#
        );
    }

    /// Allowed requests (and deny-rule refusals) name their rule and where
    /// it was written, after the fields the line always had.
    #[test]
    fn proxy_lines_name_the_deciding_rule() {
        let rule: nono_proxy::DomainRule = "*.allowed.test".parse().unwrap();
        let rule = rule.with_origin(nono_proxy::Origin::Profile {
            file: "/p/dev.toml".into(),
            line: 3,
            column: 18,
        });
        let mut ev = proxy_event(
            nono_proxy::Verdict::Allow,
            nono_proxy::Reason::Forwarded { status: 200 },
        );
        ev.rule = Some(nono_proxy::Rule::AllowDomain(rule.clone()));
        ev.host = "a.allowed.test".into();
        ev.addr = Some("198.51.100.2".parse().unwrap());
        ev.bytes_down = 10;
        let line = ProxyRecord::from(&ev).into_line(&ev.sandbox, SystemTime::UNIX_EPOCH);
        assert!(!line.deny);
        assert_eq!(
            String::from_utf8(line.json).unwrap(),
            r#"{"ts":"1970-01-01T00:00:00.000000Z","sandbox":"abc","source":"proxy","hook":"http","verdict":"allow","reason":"forwarded, upstream status 200","host":"a.allowed.test","port":80,"addr":"198.51.100.2","bytes_up":0,"bytes_down":10,"duration_ms":2,"rule":{"kind":"allow-domain","text":"*.allowed.test","origin":"/p/dev.toml:3:18"}}"#
        );

        let refusal = nono_proxy::Refusal::Denied {
            name: "evil.test".into(),
            port: 80,
            rule: Box::new("evil.test".parse().unwrap()),
        };
        let ev = proxy_event(
            nono_proxy::Verdict::Deny,
            nono_proxy::Reason::Refused(refusal),
        );
        let json = String::from_utf8(
            ProxyRecord::from(&ev)
                .into_line("abc", SystemTime::UNIX_EPOCH)
                .json,
        )
        .unwrap();
        assert!(
            json.ends_with(
                r#""rule":{"kind":"deny-domain","text":"evil.test","origin":"command line"}}"#
            ),
            "{json}"
        );
    }

    #[test]
    fn summary_line() {
        let mut s = Summary::default();
        assert_eq!(s.line("x", false), "nono-agent: sandbox x: 0 denied");
        s.add("connect4");
        s.add("connect4");
        s.add("sock_create");
        assert_eq!(
            s.line("x", false),
            "nono-agent: sandbox x: 3 denied (connect4: 2, sock_create: 1)"
        );
        s.count(&Line {
            key: "connect4",
            deny: false,
            would_deny: true,
            json: Vec::new(),
            notice: None,
        });
        assert_eq!(s.total(), 3);
        assert_eq!(
            s.line("x", true),
            "nono-agent: sandbox x: 3 denied (connect4: 2, sock_create: 1); \
             audit: 1 would have been denied"
        );
    }
}
