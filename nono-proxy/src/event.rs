//! What the proxy reports about each request: one [`ProxyEvent`] per
//! decision, handed to the caller's [`EventSink`] (the agent turns it into
//! its JSON event line).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::dns::DnsError;
use crate::policy::{Refusal, Rule};
use crate::request::RequestError;
use crate::upstream::UpstreamError;

/// Which kind of request an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A CONNECT tunnel.
    Connect,
    /// A forwarded absolute-form HTTP request.
    Http,
    /// A connection the kernel redirected to the proxy (transparent mode).
    Transparent,
    /// One request on an intercepted connection (credential injection).
    Inject,
    /// A question to the sandbox's resolver (transparent mode).
    Dns,
}

impl Hook {
    /// `connect` or `http`, as written in events.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Http => "http",
            Self::Transparent => "transparent",
            Self::Inject => "inject",
            Self::Dns => "dns",
        }
    }
}

/// Whether the request went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Connected (the event is recorded when the exchange ends).
    Allow,
    /// Refused with an error response.
    Deny,
    /// Refused by the rules, let through because the proxy runs in audit
    /// mode ([`crate::ProxyConfig::audit`]): recorded when admitted, and
    /// followed by the exchange's own `allow` event.
    WouldDeny,
}

impl Verdict {
    /// `allow` or `deny`, as written in events.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::WouldDeny => "would-deny",
        }
    }
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both directions finished (or one failed).
    Closed,
    /// The proxy was stopped.
    SandboxEnded,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
}

/// Why a connection to the destination (or the upstream proxy) failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The upstream proxy failed.
    #[error("upstream proxy: {0}")]
    Upstream(UpstreamError),
    /// No address was left to try.
    #[error("no address to connect to")]
    NoAddress,
    /// The last address tried refused or failed.
    #[error("connect to {addr}: {error}")]
    Connect {
        /// Address and port.
        addr: std::net::SocketAddr,
        /// The system's reason.
        error: std::io::Error,
    },
    /// The last address tried did not answer in time.
    #[error("connect to {addr}: timed out after {timeout:?}")]
    Timeout {
        /// Address and port.
        addr: std::net::SocketAddr,
        /// The connect timeout.
        timeout: Duration,
    },
}

/// Why a request was refused, or how an allowed one ended. Its text is the
/// event's `reason` (and, for refusals, the error response's body).
#[derive(Debug)]
pub enum Reason {
    /// No or wrong `Proxy-Authorization`.
    AuthRequired,
    /// The request itself is not acceptable.
    BadRequest(RequestError),
    /// The rules refused the target.
    Refused(Refusal),
    /// Every resolved address was refused (`first` says why the first was).
    NoUsableAddress {
        /// The target as judged.
        target: String,
        /// The first address's refusal.
        first: Option<Refusal>,
    },
    /// Name resolution failed.
    Lookup(DnsError),
    /// Connecting failed.
    Dial(DialError),
    /// The HTTP handshake with the destination failed.
    Handshake(hyper::Error),
    /// Sending the request or reading the response head failed.
    Upstream(hyper::Error),
    /// No response head within the idle timeout.
    UpstreamTimeout,
    /// The request's path and query are not a valid origin-form target.
    BadPath,
    /// An allowed tunnel ended.
    Tunnel(TunnelEnd),
    /// The client left before the tunnel was set up.
    ClientGone(hyper::Error),
    /// An allowed request was forwarded and answered.
    Forwarded {
        /// The destination's status code.
        status: u16,
    },
    /// A redirected connection's destination could not be learned from
    /// the kernel (its entry is gone: the sandbox's socket outlived it).
    NoOriginalDestination,
    /// A redirected connection has no target the rules could judge.
    NoTarget(crate::transparent::NoTarget),
    /// An intercepted request got its credential and was answered.
    Injected(Exchange),
    /// An intercepted request named another host: not sent, no credential.
    Misdirected(Exchange, crate::mitm::inject::Misdirected),
    /// An intercepted request could not be sent or answered upstream.
    InjectUpstream(Exchange, String),
    /// TLS with the real host failed (its certificate did not verify, or
    /// it does not speak TLS): the CONNECT is refused.
    UpstreamTls(String),
    /// The sandbox's TLS handshake with the proxy failed (a client that
    /// pins certificates, or one that does not trust the sandbox's CA).
    ClientTls(String),
    /// An intercepted connection ended after `requests` requests.
    Intercepted {
        /// Requests served on it.
        requests: u64,
        /// How it ended.
        end: TunnelEnd,
    },
    /// The resolver's answer (transparent mode), in words.
    Dns(String),
}

/// One intercepted request, as events name it: which credential, the
/// method, the path (without the query), the status. Never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The credential's name (`env:NAME` or `file:PATH`).
    pub credential: String,
    /// The request method.
    pub method: String,
    /// The request path, without the query.
    pub path: String,
    /// The upstream's status, once answered.
    pub status: Option<u16>,
}

impl Reason {
    /// The intercepted request this is about, if any.
    pub fn exchange(&self) -> Option<&Exchange> {
        match self {
            Self::Injected(x) | Self::Misdirected(x, _) | Self::InjectUpstream(x, _) => Some(x),
            _ => None,
        }
    }

    /// The rule that refused, when a rule did.
    pub fn rule(&self) -> Option<Rule> {
        match self {
            Self::Refused(r) => r.rule(),
            Self::NoUsableAddress { first: Some(r), .. } => r.rule(),
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AuthRequired => f.write_str(
                "proxy authentication required (use the proxy URL from HTTP_PROXY/HTTPS_PROXY)",
            ),
            Self::BadRequest(e) => e.fmt(f),
            Self::Refused(r) => r.fmt(f),
            Self::NoUsableAddress { target, first } => match first {
                Some(r) => write!(f, "{target}: {r}"),
                None => write!(f, "{target}: no address"),
            },
            Self::Lookup(e) => e.fmt(f),
            Self::Dial(e) => e.fmt(f),
            Self::Handshake(e) => write!(f, "upstream handshake: {e}"),
            Self::Upstream(e) => write!(f, "upstream: {e}"),
            Self::UpstreamTimeout => f.write_str("upstream did not answer in time"),
            Self::BadPath => f.write_str("bad request path"),
            Self::Tunnel(TunnelEnd::Closed) => f.write_str("tunnel closed"),
            Self::Tunnel(TunnelEnd::SandboxEnded) => f.write_str("tunnel closed: sandbox ended"),
            Self::Tunnel(TunnelEnd::IdleTimeout) => f.write_str("tunnel closed: idle timeout"),
            Self::ClientGone(e) => write!(f, "client went away before the tunnel: {e}"),
            Self::Forwarded { status } => write!(f, "forwarded, upstream status {status}"),
            Self::NoOriginalDestination => {
                f.write_str("redirected connection with no recorded destination")
            }
            Self::NoTarget(e) => e.fmt(f),
            Self::Injected(x) => write!(
                f,
                "credential {} injected: {} {} -> {}",
                x.credential,
                x.method,
                x.path,
                x.status.unwrap_or(0)
            ),
            Self::Misdirected(_, e) => write!(f, "refused, no credential sent: {e}"),
            Self::InjectUpstream(_, e) => write!(f, "upstream: {e}"),
            Self::UpstreamTls(e) => write!(f, "upstream TLS: {e}"),
            Self::ClientTls(e) => write!(
                f,
                "the sandbox's TLS handshake with the credential proxy failed \
                 (does the client trust the sandbox CA, SSL_CERT_FILE? does it pin certificates?): {e}"
            ),
            Self::Intercepted { requests, end } => {
                let how = match end {
                    TunnelEnd::Closed => "closed",
                    TunnelEnd::SandboxEnded => "closed: sandbox ended",
                    TunnelEnd::IdleTimeout => "closed: idle timeout",
                };
                write!(f, "intercepted connection {how} after {requests} request(s)")
            }
            Self::Dns(s) => f.write_str(s),
        }
    }
}

/// One proxy decision.
#[derive(Debug)]
pub struct ProxyEvent {
    /// The sandbox the proxy serves ([`crate::ProxyConfig::sandbox`]).
    pub sandbox: Arc<str>,
    /// Tunnel or forwarded request.
    pub hook: Hook,
    /// Allowed or refused.
    pub verdict: Verdict,
    /// Why refused, or how the allowed exchange ended.
    pub reason: Reason,
    /// The rule that decided: for allowed requests the allowing rule, for
    /// requests a deny rule refused that rule, otherwise none.
    pub rule: Option<Rule>,
    /// Requested host (normalised) or IP literal.
    pub host: String,
    /// Requested port.
    pub port: u16,
    /// Address actually connected to (none through an upstream proxy).
    pub addr: Option<IpAddr>,
    /// Transparent mode: the address the client itself dialled (a
    /// synthetic address, or whatever address it chose), which the proxy
    /// never connects to; none for other hooks and when the kernel kept no
    /// record of it.
    pub dialled: Option<IpAddr>,
    /// Bytes from the sandbox to the destination.
    pub bytes_up: u64,
    /// Bytes from the destination to the sandbox.
    pub bytes_down: u64,
    /// Time from request to end of exchange.
    pub duration: Duration,
}

/// Where the proxy sends its events. Called from connection tasks, so it
/// must not block for long.
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event.
    fn record(&self, event: ProxyEvent);
}

impl EventSink for tokio::sync::mpsc::UnboundedSender<ProxyEvent> {
    fn record(&self, event: ProxyEvent) {
        // A closed receiver means nobody wants events any more.
        let _ = self.send(event);
    }
}
