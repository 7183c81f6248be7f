//! The proxy server: CONNECT tunnels and absolute-form HTTP/1.1 forwarding,
//! every request judged by [`ProxyPolicy`] before anything is resolved, and
//! every resolved address judged before anything is connected.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::policy::{ProxyPolicy, Refusal, Target};
use super::pool::Key;
use super::resolve::Resolver;
use super::upstream::Upstream;
use crate::events::{EventTx, ProxyRecord};

type ProxyBody = BoxBody<Bytes, hyper::Error>;

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
pub struct State {
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
    pub sandbox: String,
    /// Where events go.
    pub events: EventTx,
    /// Cancelled when the sandbox ends: open tunnels close and record their
    /// events instead of vanishing with the runtime.
    pub shutdown: CancellationToken,
    /// Every connection and tunnel task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Keep-alive connections for forwarded HTTP requests.
    pub pool: super::pool::Pool,
}

/// Serves connections from `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let slots = Arc::new(Semaphore::new(state.limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            // EMFILE and friends: back off instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                tokio::spawn(refuse_busy(stream));
                continue;
            }
        };
        let state = state.clone();
        let header_timeout = state.limits.header_timeout;
        let max_head = state.limits.max_header_bytes;
        let tasks = state.tasks.clone();
        tasks.spawn(async move {
            let svc = service_fn(move |req| handle(req, state.clone(), peer));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(max_head)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
            drop(permit);
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

fn text(status: StatusCode, msg: impl Into<String>) -> Response<ProxyBody> {
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

fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut r = Response::new(Empty::new().map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r
}

/// Checks `Proxy-Authorization: Basic base64(nono:SECRET)`.
pub fn authorized(headers: &HeaderMap, secret: Option<&str>) -> bool {
    let Some(secret) = secret else {
        return true;
    };
    let Some(v) = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let expected = format!("nono:{secret}");
    constant_time_eq(&raw, expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One request decision, recorded as an event.
struct Decision<'a> {
    state: &'a State,
    kind: &'static str,
    host: String,
    port: u16,
    started: Instant,
}

impl Decision<'_> {
    fn record(
        &self,
        verdict: &'static str,
        reason: String,
        addr: Option<IpAddr>,
        up: u64,
        down: u64,
    ) {
        let _ = self.state.events.send(
            ProxyRecord {
                kind: self.kind,
                verdict,
                reason,
                host: self.host.clone(),
                port: self.port,
                addr,
                bytes_up: up,
                bytes_down: down,
                duration_ms: self.started.elapsed().as_millis() as u64,
            }
            .into_line(&self.state.sandbox),
        );
    }

    fn deny(&self, status: StatusCode, why: &str) -> Response<ProxyBody> {
        self.record("deny", why.to_string(), None, 0, 0);
        text(status, format!("nono-agent proxy: {why}"))
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    _peer: SocketAddr,
) -> Result<Response<ProxyBody>, Infallible> {
    let kind = if req.method() == Method::CONNECT {
        "connect"
    } else {
        "http"
    };
    let started = Instant::now();
    if !authorized(req.headers(), state.secret.as_deref()) {
        let d = Decision {
            state: &state,
            kind,
            host: req.uri().host().unwrap_or("").to_string(),
            port: req.uri().port_u16().unwrap_or(0),
            started,
        };
        let mut r = d.deny(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxy authentication required (use the proxy URL from HTTP_PROXY/HTTPS_PROXY)",
        );
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"nono-agent\""),
        );
        return Ok(r);
    }
    Ok(if req.method() == Method::CONNECT {
        connect(req, state, started).await
    } else {
        forward(req, state, started).await
    })
}

/// Parses and judges host:port (normalising `d.host`), resolves, checks
/// every address. Returns the target and the addresses that may be
/// connected to.
async fn admit(d: &mut Decision<'_>) -> Result<(Target, Vec<IpAddr>), Response<ProxyBody>> {
    let target =
        Target::parse(&d.host).map_err(|Refusal(why)| d.deny(StatusCode::BAD_REQUEST, &why))?;
    d.host = target.to_string();
    let addrs = admit_target(d, &target).await?;
    Ok((target, addrs))
}

async fn admit_target(
    d: &Decision<'_>,
    target: &Target,
) -> Result<Vec<IpAddr>, Response<ProxyBody>> {
    let state = d.state;
    let rule = state
        .policy
        .check_target(target, d.port)
        .map_err(|Refusal(why)| d.deny(StatusCode::FORBIDDEN, &why))?;
    let _ = rule;
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
            .map_err(|e| d.deny(StatusCode::BAD_GATEWAY, &e))?,
    };
    let mut ok = Vec::new();
    let mut first_refusal = None;
    for ip in addrs {
        match state.policy.check_resolved(ip, d.port) {
            Ok(()) => ok.push(ip),
            Err(r) => {
                first_refusal.get_or_insert(r);
            }
        }
    }
    if ok.is_empty() {
        let why = first_refusal
            .map(|r| r.0)
            .unwrap_or_else(|| "no address".into());
        return Err(d.deny(StatusCode::FORBIDDEN, &format!("{target}: {why}")));
    }
    Ok(ok)
}

/// Connects to the first reachable checked address (never re-resolving).
/// With an upstream proxy: a CONNECT tunnel through it (`tunnel`), or a
/// plain connection to it for absolute-form forwarding.
async fn dial(
    d: &Decision<'_>,
    target: &Target,
    addrs: &[IpAddr],
    tunnel: bool,
) -> Result<(TcpStream, Option<IpAddr>), String> {
    let timeout = d.state.limits.connect_timeout;
    if let Some(up) = &d.state.upstream {
        let s = if tunnel {
            up.tunnel(&target.to_string(), d.port, timeout).await
        } else {
            up.connect(timeout).await
        }
        .map_err(|e| format!("upstream proxy: {e}"))?;
        return Ok((s, None));
    }
    let mut last = String::from("no address to connect to");
    for ip in addrs {
        let sa = SocketAddr::new(*ip, d.port);
        match tokio::time::timeout(timeout, TcpStream::connect(sa)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok((s, Some(*ip)));
            }
            Ok(Err(e)) => last = format!("connect to {sa}: {e}"),
            Err(_) => last = format!("connect to {sa}: timed out after {timeout:?}"),
        }
    }
    Err(last)
}

async fn connect(
    req: Request<Incoming>,
    state: Arc<State>,
    started: Instant,
) -> Response<ProxyBody> {
    let uri = req.uri().clone();
    let (host, port) = match (uri.scheme(), uri.path_and_query(), uri.authority()) {
        (None, None, Some(a)) => match a.port_u16() {
            Some(p) if p != 0 => (a.host().to_string(), p),
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "nono-agent proxy: CONNECT needs host:port",
                )
            }
        },
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "nono-agent proxy: CONNECT needs host:port",
            )
        }
    };
    let mut d = Decision {
        state: &state,
        kind: "connect",
        host,
        port,
        started,
    };
    let (target, addrs) = match admit(&mut d).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let (upstream, addr) = match dial(&d, &target, &addrs, true).await {
        Ok(x) => x,
        Err(e) => return d.deny(StatusCode::BAD_GATEWAY, &e),
    };
    let host = d.host.clone();
    let state2 = state.clone();
    state.tasks.spawn(async move {
        let d = Decision {
            state: &state2,
            kind: "connect",
            host,
            port,
            started,
        };
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let (up, down, why) = tunnel(
                    TokioIo::new(upgraded),
                    upstream,
                    state2.limits.idle_timeout,
                    &state2.shutdown,
                )
                .await;
                d.record("allow", why.into(), addr, up, down);
            }
            Err(e) => d.record(
                "allow",
                format!("client went away before the tunnel: {e}"),
                addr,
                0,
                0,
            ),
        }
    });
    empty(StatusCode::OK)
}

/// Per-direction copy buffer of a tunnel. 16 KiB keeps 1,000 busy tunnels
/// near 30 MB (64 KiB buffers measured 134 MB) at some CPU cost per GiB.
const TUNNEL_BUF: usize = 16 * 1024;

/// Copies both ways until both directions finished or nothing moved for
/// `idle`; a finished direction is half-closed on the other side. Returns
/// (client→server, server→client) byte counts.
async fn tunnel<C>(
    client: C,
    server: TcpStream,
    idle: Duration,
    shutdown: &CancellationToken,
) -> (u64, u64, &'static str)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(AtomicU64::new(0));
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let mut client = Activity::new(client, activity.clone(), up.clone());
    let mut server = Activity::new(server, activity.clone(), down.clone());
    let copy =
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, TUNNEL_BUF, TUNNEL_BUF);
    tokio::pin!(copy);
    let mut last_seen = 0;
    let why = loop {
        tokio::select! {
            _ = &mut copy => break "tunnel closed",
            _ = shutdown.cancelled() => break "tunnel closed: sandbox ended",
            _ = tokio::time::sleep(idle) => {
                let now = activity.load(Ordering::Relaxed);
                if now == last_seen {
                    break "tunnel closed: idle timeout";
                }
                last_seen = now;
            }
        }
    };
    (
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
        why,
    )
}

/// Counts bytes read and bumps a shared activity counter on every I/O.
struct Activity<S> {
    inner: S,
    activity: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
}

impl<S> Activity<S> {
    fn new(inner: S, activity: Arc<AtomicU64>, read: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            activity,
            read,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read.fetch_add(n, Ordering::Relaxed);
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus proxy credentials: never
/// forwarded in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Why an absolute-form request cannot be forwarded, if it cannot.
pub fn check_forward_request(uri: &Uri, headers: &HeaderMap) -> Result<(String, u16), String> {
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err("https:// URLs must be requested with CONNECT (HTTPS_PROXY)".into());
        }
        Some(other) => return Err(format!("scheme {other}:// is not supported")),
        None => {
            return Err(
                "this is a proxy: requests must use an absolute URL (http://host/path)".into(),
            );
        }
    }
    let authority = uri.authority().ok_or("request URL has no host")?;
    if authority.as_str().contains('@') {
        return Err("credentials in the request URL are not forwarded".into());
    }
    let host = authority.host().to_string();
    let port = authority.port_u16().unwrap_or(80);
    if port == 0 {
        return Err("port 0".into());
    }
    // Host must name the same authority as the URL: a mismatch is how
    // requests are smuggled past name-based rules.
    let hosts: Vec<_> = headers.get_all(header::HOST).iter().collect();
    if hosts.len() != 1 {
        return Err("exactly one Host header is required".into());
    }
    let h = hosts[0].to_str().map_err(|_| "Host header is not text")?;
    let (hh, hp) = split_host_port(h).ok_or("Host header is malformed")?;
    let same_host =
        Target::parse(&hh).ok() == Target::parse(&host).ok() && Target::parse(&hh).is_ok();
    if !same_host || hp.unwrap_or(80) != port {
        return Err(format!(
            "Host header {h:?} does not match the request URL's {authority}"
        ));
    }
    // Conflicting framing: refuse rather than pick one (request smuggling).
    // hyper already normalises what reaches us (RFC 9112 §6.1: with both,
    // Transfer-Encoding wins, Content-Length is dropped and the connection
    // closes after the response; identical duplicate lengths are merged,
    // differing ones refused), and every request is re-serialised, so this
    // is a second line should hyper's behaviour ever change.
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err("both Transfer-Encoding and Content-Length are present".into());
    }
    if headers.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err("more than one Content-Length header".into());
    }
    Ok((host, port))
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if tail.is_empty() => None,
            None => return None,
        };
        return Some((format!("[{h}]"), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), Some(p.parse().ok()?))),
        None => Some((s.to_string(), None)),
    }
}

async fn forward(
    req: Request<Incoming>,
    state: Arc<State>,
    started: Instant,
) -> Response<ProxyBody> {
    let (host, port) = match check_forward_request(req.uri(), req.headers()) {
        Ok(x) => x,
        Err(why) => {
            let d = Decision {
                state: &state,
                kind: "http",
                host: req.uri().host().unwrap_or("").to_string(),
                port: req.uri().port_u16().unwrap_or(80),
                started,
            };
            return d.deny(StatusCode::BAD_REQUEST, &why);
        }
    };
    let mut d = Decision {
        state: &state,
        kind: "http",
        host,
        port,
        started,
    };
    let (target, addrs) = match admit(&mut d).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    // A pooled connection to one of the addresses just checked, or a new one.
    let keys: Vec<Key> = if state.upstream.is_some() {
        vec![Key::Upstream]
    } else {
        addrs
            .iter()
            .map(|ip| Key::Direct(SocketAddr::new(*ip, port)))
            .collect()
    };
    let mut pooled = None;
    'find: for k in &keys {
        while let Some(mut s) = state.pool.take(k) {
            if s.ready().await.is_ok() {
                pooled = Some((s, k.clone()));
                break 'find;
            }
        }
    }
    let (mut sender, key, addr) = match pooled {
        Some((s, k)) => {
            let addr = match &k {
                Key::Direct(sa) => Some(sa.ip()),
                Key::Upstream => None,
            };
            (s, k, addr)
        }
        None => {
            let (stream, addr) = match dial(&d, &target, &addrs, false).await {
                Ok(x) => x,
                Err(e) => return d.deny(StatusCode::BAD_GATEWAY, &e),
            };
            let (sender, conn) =
                match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                    Ok(x) => x,
                    Err(e) => {
                        return d.deny(StatusCode::BAD_GATEWAY, &format!("upstream handshake: {e}"))
                    }
                };
            state.tasks.spawn(conn);
            let key = match addr {
                Some(ip) => Key::Direct(SocketAddr::new(ip, port)),
                None => Key::Upstream,
            };
            (sender, key, addr)
        }
    };

    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if state.upstream.is_none() {
        // Origin servers get origin-form; an upstream proxy keeps the
        // absolute URL.
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = match pq.parse() {
            Ok(u) => u,
            Err(_) => return d.deny(StatusCode::BAD_REQUEST, "bad request path"),
        };
    } else if let Some(up) = &state.upstream {
        if let Some(auth) = up.authorization() {
            parts.headers.insert(header::PROXY_AUTHORIZATION, auth);
        }
    }
    let up_bytes = Arc::new(AtomicU64::new(0));
    let down_bytes = Arc::new(AtomicU64::new(0));
    let out = Request::from_parts(parts, Counting::new(body, up_bytes.clone()).boxed());
    let resp = match tokio::time::timeout(state.limits.idle_timeout, sender.send_request(out)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return d.deny(StatusCode::BAD_GATEWAY, &format!("upstream: {e}")),
        Err(_) => {
            return d.deny(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream did not answer in time",
            )
        }
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let host = d.host.clone();
    let status = parts.status.as_u16();
    let done = Done {
        state: state.clone(),
        host,
        port,
        addr,
        started,
        status,
        up: up_bytes,
        down: down_bytes.clone(),
        reuse: Some((key, sender)),
        finished: false,
    };
    let body = Counting::new(body, down_bytes).with_done(done).boxed();
    Response::from_parts(parts, body)
}

/// Records the forwarded exchange's event when the response body is finished
/// or dropped (client gone), with the byte counts by then.
struct Done {
    state: Arc<State>,
    host: String,
    port: u16,
    addr: Option<IpAddr>,
    started: Instant,
    status: u16,
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
    /// The origin connection, returned to the pool if the response was read
    /// to its end.
    reuse: Option<(Key, hyper::client::conn::http1::SendRequest<ProxyBody>)>,
    finished: bool,
}

impl Drop for Done {
    fn drop(&mut self) {
        if self.finished {
            if let Some((key, sender)) = self.reuse.take() {
                self.state.pool.put(key, sender);
            }
        }
        let d = Decision {
            state: &self.state,
            kind: "http",
            host: std::mem::take(&mut self.host),
            port: self.port,
            started: self.started,
        };
        d.record(
            "allow",
            format!("forwarded, upstream status {}", self.status),
            self.addr,
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        );
    }
}

/// A body that counts its data bytes.
struct Counting<B> {
    inner: B,
    count: Arc<AtomicU64>,
    done: Option<Done>,
}

impl<B> Counting<B> {
    fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            count,
            done: None,
        }
    }

    fn with_done(mut self, done: Done) -> Self {
        self.done = Some(done);
        self
    }
}

impl<B> Body for Counting<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.count.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                // hyper stops polling a body that says it has ended, so the
                // end is noticed here rather than by a final `None`.
                if self.inner.is_end_stream() {
                    if let Some(d) = self.done.as_mut() {
                        d.finished = true;
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(d) = self.done.as_mut() {
                    d.finished = true;
                }
                self.done.take();
            }
            Poll::Ready(Some(Err(_))) => {
                self.done.take();
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forward_request_checks() {
        let u: Uri = "http://allowed.test/x".parse().unwrap();
        assert_eq!(
            check_forward_request(&u, &headers(&[("host", "allowed.test")])).unwrap(),
            ("allowed.test".into(), 80)
        );
        assert!(check_forward_request(&u, &headers(&[("host", "ALLOWED.test.")])).is_ok());
        assert!(check_forward_request(&u, &headers(&[("host", "allowed.test:80")])).is_ok());
        assert!(check_forward_request(&u, &headers(&[("host", "evil.test")])).is_err());
        assert!(check_forward_request(&u, &headers(&[("host", "allowed.test:8080")])).is_err());
        assert!(check_forward_request(&u, &headers(&[])).is_err());
        assert!(check_forward_request(
            &u,
            &headers(&[("host", "allowed.test"), ("host", "allowed.test")])
        )
        .is_err());
        assert!(check_forward_request(
            &u,
            &headers(&[
                ("host", "allowed.test"),
                ("content-length", "5"),
                ("transfer-encoding", "chunked")
            ])
        )
        .is_err());
        let https: Uri = "https://allowed.test/".parse().unwrap();
        assert!(check_forward_request(&https, &headers(&[("host", "allowed.test")])).is_err());
        let origin: Uri = "/x".parse().unwrap();
        assert!(check_forward_request(&origin, &headers(&[("host", "allowed.test")])).is_err());
        let creds: Uri = "http://user:pw@allowed.test/".parse().unwrap();
        assert!(check_forward_request(&creds, &headers(&[("host", "allowed.test")])).is_err());
        let v6: Uri = "http://[2001:db8::2]:8080/".parse().unwrap();
        assert!(check_forward_request(&v6, &headers(&[("host", "[2001:db8::2]:8080")])).is_ok());
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic abc"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn proxy_credentials() {
        let good = base64::engine::general_purpose::STANDARD.encode("nono:s3cret");
        let bad = base64::engine::general_purpose::STANDARD.encode("nono:wrong");
        assert!(authorized(
            &headers(&[("proxy-authorization", &format!("Basic {good}"))]),
            Some("s3cret")
        ));
        assert!(!authorized(
            &headers(&[("proxy-authorization", &format!("Basic {bad}"))]),
            Some("s3cret")
        ));
        assert!(!authorized(&headers(&[]), Some("s3cret")));
        assert!(authorized(&headers(&[]), None));
    }
}
