//! The proxy server: the accept loop, authentication, and the checks every
//! request goes through — judged by [`ProxyPolicy`] before anything is
//! resolved, and every resolved address judged before anything is
//! connected. CONNECT tunnels are in `tunnel.rs`, forwarded requests in
//! `forward.rs`.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dns::Resolver;
use crate::event::{DialError, EventSink, Hook, ProxyEvent, Reason, Verdict};
use crate::policy::{ProxyPolicy, Refusal, Rule, Target};
use crate::pool::Pool;
use crate::request::authorized;
use crate::upstream::Upstream;
use crate::ProxyConfig;

pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Limits and timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Establishing a connection to the destination.
    pub connect_timeout: Duration,
    /// A tunnel or forwarded exchange with no bytes either way for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// Reading a request's headers (slow-loris defence).
    pub header_timeout: Duration,
    /// Client connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Largest request head accepted (64 KiB).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            header_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Everything a request handler needs.
pub(crate) struct State {
    /// Rules.
    pub policy: ProxyPolicy,
    /// Name lookup.
    pub resolver: Resolver,
    /// Required `Proxy-Authorization: Basic nono:SECRET`, if any.
    pub secret: Option<String>,
    /// Chain every request to this proxy instead of connecting directly.
    pub upstream: Option<Upstream>,
    /// Limits.
    pub limits: Limits,
    /// Sandbox id for events.
    pub sandbox: Arc<str>,
    /// Where events go.
    pub events: Arc<dyn EventSink>,
    /// Cancelled when the sandbox ends: open tunnels close and record their
    /// events instead of vanishing with the runtime.
    pub shutdown: CancellationToken,
    /// Every connection and tunnel task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Keep-alive connections for forwarded HTTP requests.
    pub pool: Pool,
    /// Audit mode ([`ProxyConfig::audit`]).
    pub audit: bool,
    /// Credential injection, when credentials were given.
    pub mitm: Option<crate::mitm::Interceptor>,
    /// [`Limits::max_connections`] places, one per client connection or
    /// what it became ([`Slot`]), shared by every listener (127.0.0.1, ::1,
    /// transparent): one count per sandbox, not per listening socket.
    pub slots: Arc<Semaphore>,
}

impl State {
    /// The state for `config` (builds the resolver).
    pub fn new(config: ProxyConfig, events: Arc<dyn EventSink>) -> Result<Self, crate::Error> {
        let mitm = if config.credentials.is_empty() {
            None
        } else {
            Some(
                crate::mitm::Interceptor::new(
                    &config.sandbox,
                    &config.credentials,
                    &config.upstream_ca,
                )
                .map_err(crate::Error::Mitm)?,
            )
        };
        let max_connections = config.limits.max_connections;
        Ok(Self {
            mitm,
            resolver: Resolver::new(&config.pins, config.dns_server).map_err(crate::Error::Dns)?,
            policy: config.policy,
            secret: config.secret,
            upstream: config.upstream,
            limits: config.limits,
            sandbox: config.sandbox.into(),
            events,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            pool: Pool::default(),
            audit: config.audit,
            slots: Arc::new(Semaphore::new(max_connections)),
        })
    }
}

/// Serves connections from `listener` until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    let header_timeout = state.limits.header_timeout;
    let max_head = state.limits.max_header_bytes;
    accept_loop(
        listener,
        &state,
        |stream| {
            tokio::spawn(refuse_busy(stream));
        },
        |stream, peer, state, slot| async move {
            let svc = service_fn(move |req| handle(req, state.clone(), peer, slot.clone()));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(max_head)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        },
    )
    .await;
}

/// A client connection's place among [`Limits::max_connections`]. The
/// connection's task holds it, and so does every tunnel or intercepted
/// session the connection turned into, until that closes: a CONNECT that
/// gave its place back once it became a tunnel let a sandbox open tunnels
/// until the proxy ran out of descriptors.
#[derive(Clone)]
pub(crate) struct Slot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Accepts connections until the task is aborted, at most
/// `max_connections` served at once by all the proxy's listeners together
/// (counting the tunnels they became, see [`Slot`]): each one beyond goes to `busy`, the others to `serve` (with
/// their slot, for what outlives the connection's task) in a task of the
/// proxy's tracker (so shutdown waits for it). Accept errors (EMFILE and
/// friends) back off instead of spinning. Shared by the HTTP side and the
/// transparent listener.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    state: &Arc<State>,
    busy: impl Fn(TcpStream),
    serve: impl Fn(TcpStream, SocketAddr, Arc<State>, Slot) -> F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = state.slots.clone().try_acquire_owned() else {
            busy(stream);
            continue;
        };
        let slot = Slot {
            _permit: Arc::new(permit),
        };
        let conn = serve(stream, peer, state.clone(), slot.clone());
        state.tasks.spawn(async move {
            conn.await;
            drop(slot);
        });
    }
}

async fn refuse_busy(mut stream: TcpStream) {
    let _ = stream
        .write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: 53\r\n\r\nnono-agent proxy: too many connections from sandbox\n\n",
        )
        .await;
    let _ = stream.shutdown().await;
}

/// A plain-text response (`msg` and a newline).
pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response<ProxyBody> {
    let mut body = msg.into();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A response without body.
pub(crate) fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(Empty::new().map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r
}

/// Records the event of one request: what was asked, when, and (once the
/// rules allowed it) the rule that did.
pub(crate) struct Recorder {
    /// Where events go (and the limits, pool, tasks the handlers use).
    pub state: Arc<State>,
    /// Tunnel or forwarded request.
    pub hook: Hook,
    /// The host as asked for, normalised once parsed.
    pub host: String,
    /// The port asked for.
    pub port: u16,
    /// When the request arrived, for the event's duration.
    pub started: Instant,
    /// The rule that allowed the target, once [`admit`] has judged it.
    pub rule: Option<Rule>,
    /// Transparent mode: the address the client dialled (for events).
    pub dialled: Option<IpAddr>,
}

impl Recorder {
    pub fn new(state: &Arc<State>, hook: Hook, host: String, port: u16, started: Instant) -> Self {
        Self {
            state: state.clone(),
            hook,
            host,
            port,
            started,
            rule: None,
            dialled: None,
        }
    }

    pub(crate) fn record(
        &self,
        verdict: Verdict,
        reason: Reason,
        rule: Option<Rule>,
        addr: Option<IpAddr>,
        up: u64,
        down: u64,
    ) {
        self.state.events.record(ProxyEvent {
            sandbox: self.state.sandbox.clone(),
            hook: self.hook,
            verdict,
            reason,
            rule,
            host: self.host.clone(),
            port: self.port,
            addr,
            dialled: self.dialled,
            bytes_up: up,
            bytes_down: down,
            duration: self.started.elapsed(),
        });
    }

    /// Records an allowed exchange that ended (with the allowing rule).
    pub fn allow(&self, reason: Reason, addr: Option<IpAddr>, up: u64, down: u64) {
        self.record(Verdict::Allow, reason, self.rule.clone(), addr, up, down);
    }

    /// Records a refusal that audit mode lets through (with the rule that
    /// would have refused, if a rule would have).
    pub fn would_deny(&self, refusal: Refusal, addr: Option<IpAddr>) {
        let reason = Reason::Refused(refusal);
        let rule = reason.rule();
        self.record(Verdict::WouldDeny, reason, rule, addr, 0, 0);
    }

    /// Records a refusal and answers it with `status` and the reason.
    pub fn deny(&self, status: StatusCode, reason: Reason) -> Response<ProxyBody> {
        let body = format!("nono-agent proxy: {reason}");
        let rule = reason.rule();
        self.record(Verdict::Deny, reason, rule, None, 0, 0);
        text(status, body)
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    _peer: SocketAddr,
    slot: Slot,
) -> Result<Response<ProxyBody>, Infallible> {
    let hook = if req.method() == Method::CONNECT {
        Hook::Connect
    } else {
        Hook::Http
    };
    let started = Instant::now();
    if !authorized(req.headers(), state.secret.as_deref()) {
        let d = Recorder::new(
            &state,
            hook,
            req.uri().host().unwrap_or("").to_string(),
            // As the forwarding path records a request without a port.
            req.uri()
                .port_u16()
                .unwrap_or(if hook == Hook::Http { 80 } else { 0 }),
            started,
        );
        let mut r = d.deny(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Reason::AuthRequired,
        );
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"nono-agent\""),
        );
        return Ok(r);
    }
    // A CONNECT to a credential host is intercepted; every other one is
    // the end-to-end tunnel.
    let intercepted = match (&state.mitm, hook) {
        (Some(m), Hook::Connect) => req
            .uri()
            .authority()
            .and_then(|a| m.lookup(a.host(), a.port_u16()?)),
        _ => None,
    };
    Ok(if let Some(entry) = intercepted {
        crate::mitm::serve::connect(req, state, started, entry, slot).await
    } else if hook == Hook::Connect {
        crate::tunnel::connect(req, state, started, slot).await
    } else {
        crate::forward::forward(req, state, started).await
    })
}

/// Parses and judges host:port (normalising `d.host`, remembering the rule
/// that allowed it in `d.rule`), resolves, checks every address. Returns
/// the target and the addresses that may be connected to.
pub(crate) async fn admit(d: &mut Recorder) -> Result<(Target, Vec<IpAddr>), Response<ProxyBody>> {
    let target =
        Target::parse(&d.host).map_err(|r| d.deny(StatusCode::BAD_REQUEST, Reason::Refused(r)))?;
    d.host = target.to_string();
    match d.state.policy.check_target(&target, d.port) {
        Ok(rule) => d.rule = Some(rule),
        Err(r) if d.state.audit && r.auditable() => d.would_deny(r, None),
        Err(r) => return Err(d.deny(StatusCode::FORBIDDEN, Reason::Refused(r))),
    }
    let addrs = resolve_checked(d, &target).await?;
    Ok((target, addrs))
}

/// The addresses of an allowed target that the rules let us connect to.
async fn resolve_checked(
    d: &Recorder,
    target: &Target,
) -> Result<Vec<IpAddr>, Response<ProxyBody>> {
    let state = &d.state;
    if state.upstream.is_some() {
        // The upstream proxy resolves; see the README's limits.
        return Ok(Vec::new());
    }
    let addrs = match target {
        Target::Ip(ip) => vec![*ip],
        Target::Name(n) => state
            .resolver
            .lookup(n)
            .await
            .map_err(|e| d.deny(StatusCode::BAD_GATEWAY, Reason::Lookup(e)))?,
    };
    let mut ok = Vec::new();
    let mut first = None;
    for ip in addrs {
        match state.policy.check_resolved(ip, d.port) {
            Ok(()) => ok.push(ip),
            Err(r) if state.audit && r.auditable() => {
                d.would_deny(r, Some(ip));
                ok.push(ip);
            }
            Err(r) => {
                first.get_or_insert(r);
            }
        }
    }
    if ok.is_empty() {
        return Err(d.deny(
            StatusCode::FORBIDDEN,
            Reason::NoUsableAddress {
                target: target.to_string(),
                first,
            },
        ));
    }
    Ok(ok)
}

/// Connects to the first reachable checked address (never re-resolving).
/// With an upstream proxy: a CONNECT tunnel through it (`tunnel`), or a
/// plain connection to it for absolute-form forwarding.
pub(crate) async fn dial(
    d: &Recorder,
    target: &Target,
    addrs: &[IpAddr],
    tunnel: bool,
) -> Result<(TcpStream, Option<IpAddr>), DialError> {
    let timeout = d.state.limits.connect_timeout;
    if let Some(up) = &d.state.upstream {
        let s = if tunnel {
            up.tunnel(&target.to_string(), d.port, timeout).await
        } else {
            up.connect(timeout).await
        }
        .map_err(DialError::Upstream)?;
        return Ok((s, None));
    }
    let mut last = DialError::NoAddress;
    for ip in addrs {
        let addr = SocketAddr::new(*ip, d.port);
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok((s, Some(*ip)));
            }
            Ok(Err(error)) => last = DialError::Connect { addr, error },
            Err(_) => last = DialError::Timeout { addr, timeout },
        }
    }
    Err(last)
}
