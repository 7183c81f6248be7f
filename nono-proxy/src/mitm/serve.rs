//! The plumbing of an intercepted CONNECT: admitted by the same rules as a
//! tunnel, then TLS to the real host first (so a host whose certificate
//! does not verify refuses the CONNECT with the reason, and the sandbox is
//! offered HTTP/2 only when the host speaks it), then TLS with the sandbox
//! on a leaf of the sandbox's CA, then each request passed to the host with
//! its credential put in. Bodies are streamed both ways as they come
//! (server-sent events arrive as sent): hyper's bodies are handed on, never
//! collected.

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper::server::conn::{http1 as server1, http2 as server2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Mutex;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use super::inject::{check_authority, inject, strip_hop_by_hop};
use super::Entry;
use crate::event::{Exchange, Hook, Reason, TunnelEnd, Verdict};
use crate::server::{admit, dial, empty, ProxyBody, Recorder, Slot, State};

/// The sending half towards the real host.
enum Sender {
    /// HTTP/2: requests multiplex.
    H2(client2::SendRequest<Incoming>),
    /// HTTP/1.1: one request at a time (the sandbox is offered only
    /// HTTP/1.1 then, so its requests come one at a time anyway).
    H1(Mutex<client1::SendRequest<Incoming>>),
}

/// What each request on one intercepted connection needs.
struct Conn {
    state: Arc<State>,
    entry: Arc<Entry>,
    sender: Sender,
    requests: AtomicU64,
    /// Cancelled when the connection to the real host ends (it closed an
    /// idle connection, sent GOAWAY, failed): the sandbox's connection is
    /// then shut down gracefully, so its client reconnects instead of
    /// getting 502 for every later request.
    upstream_gone: CancellationToken,
}

/// Handles a CONNECT to a credential host (see the module docs).
pub(crate) async fn connect(
    req: Request<Incoming>,
    state: Arc<State>,
    started: Instant,
    entry: Arc<Entry>,
    slot: Slot,
) -> Response<ProxyBody> {
    let mut d = Recorder::new(
        &state,
        Hook::Connect,
        entry.host.clone(),
        entry.port,
        started,
    );
    let (target, addrs) = match admit(&mut d).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let (tcp, addr) = match dial(&d, &target, &addrs, true).await {
        Ok(x) => x,
        Err(e) => return d.deny(StatusCode::BAD_GATEWAY, Reason::Dial(e)),
    };
    let Some(client_config) = state.mitm.as_ref().map(|m| m.client.clone()) else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let name = match ServerName::try_from(entry.host.clone()) {
        Ok(n) => n,
        Err(e) => return d.deny(StatusCode::BAD_GATEWAY, Reason::UpstreamTls(e.to_string())),
    };
    let timeout = state.limits.connect_timeout;
    let tls = match tokio::time::timeout(
        timeout,
        TlsConnector::from(client_config).connect(name, tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return d.deny(StatusCode::BAD_GATEWAY, Reason::UpstreamTls(e.to_string())),
        Err(_) => {
            return d.deny(
                StatusCode::GATEWAY_TIMEOUT,
                Reason::UpstreamTls(format!("no handshake within {timeout:?}")),
            )
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let upstream_gone = CancellationToken::new();
    let gone = upstream_gone.clone();
    let sender = if h2 {
        match client2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
        {
            Ok((s, conn)) => {
                state.tasks.spawn(async move {
                    let _ = conn.await;
                    gone.cancel();
                });
                Sender::H2(s)
            }
            Err(e) => return d.deny(StatusCode::BAD_GATEWAY, Reason::Handshake(e)),
        }
    } else {
        match client1::Builder::new().handshake(io).await {
            Ok((s, conn)) => {
                state.tasks.spawn(async move {
                    let _ = conn.await;
                    gone.cancel();
                });
                Sender::H1(Mutex::new(s))
            }
            Err(e) => return d.deny(StatusCode::BAD_GATEWAY, Reason::Handshake(e)),
        }
    };
    let server_config = if h2 {
        entry.server_h2.clone()
    } else {
        entry.server_h1.clone()
    };
    let conn = Arc::new(Conn {
        state: state.clone(),
        entry,
        sender,
        requests: AtomicU64::new(0),
        upstream_gone,
    });
    // The session holds the client connection's slot until it ends.
    state.tasks.spawn(async move {
        let end = match hyper::upgrade::on(req).await {
            Ok(upgraded) => serve_client(upgraded, server_config, conn.clone(), &d).await,
            Err(e) => {
                drop(slot);
                d.allow(Reason::ClientGone(e), addr, 0, 0);
                return;
            }
        };
        drop(slot);
        if let Some(end) = end {
            let requests = conn.requests.load(Ordering::Relaxed);
            d.allow(Reason::Intercepted { requests, end }, addr, 0, 0);
        }
    });
    empty(StatusCode::OK)
}

/// TLS with the sandbox, then HTTP on it until it ends. `None` when the
/// handshake failed (recorded here).
async fn serve_client(
    upgraded: hyper::upgrade::Upgraded,
    config: Arc<rustls::ServerConfig>,
    conn: Arc<Conn>,
    d: &Recorder,
) -> Option<TunnelEnd> {
    let state = conn.state.clone();
    let accept = TlsAcceptor::from(config).accept(TokioIo::new(upgraded));
    let tls = match tokio::time::timeout(state.limits.header_timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            d.record(
                Verdict::Deny,
                Reason::ClientTls(e.to_string()),
                None,
                None,
                0,
                0,
            );
            return None;
        }
        Err(_) => {
            d.record(
                Verdict::Deny,
                Reason::ClientTls("no handshake in time".into()),
                None,
                None,
                0,
                0,
            );
            return None;
        }
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Active {
        inner: tls,
        activity: activity.clone(),
    });
    let c = conn.clone();
    let svc = service_fn(move |req| handle(req, c.clone()));
    let shutdown = state.shutdown.clone();
    let gone = conn.upstream_gone.clone();
    let idle = state.limits.idle_timeout;
    // As a tunnel: closed when the sandbox ends, or when no byte moved to
    // or from the sandbox for the idle timeout; shut down gracefully (the
    // answer in progress completes) when the real host's side ended.
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            let mut last_seen = 0;
            let mut draining = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break TunnelEnd::Closed,
                    _ = shutdown.cancelled() => break TunnelEnd::SandboxEnded,
                    _ = gone.cancelled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = tokio::time::sleep(idle) => {
                        let now = activity.load(Ordering::Relaxed);
                        if now == last_seen {
                            break TunnelEnd::IdleTimeout;
                        }
                        last_seen = now;
                    }
                }
            }
        }};
    }
    Some(if h2 {
        drive!(server2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc))
    } else {
        drive!(server1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(state.limits.header_timeout)
            .max_buf_size(state.limits.max_header_bytes)
            .serve_connection(io, svc))
    })
}

/// The sandbox's side of an intercepted connection, counting reads and
/// writes that moved bytes (for the idle timeout).
struct Active<S> {
    inner: S,
    activity: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Active<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Active<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One request: checked, credential put in, sent, answered (streamed).
async fn handle(
    req: Request<Incoming>,
    conn: Arc<Conn>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    conn.requests.fetch_add(1, Ordering::Relaxed);
    let entry = &conn.entry;
    let d = Recorder::new(
        &conn.state,
        Hook::Inject,
        entry.host.clone(),
        entry.port,
        started,
    );
    let mut x = Exchange {
        credential: entry
            .creds
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(","),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        status: None,
    };
    if let Err(e) = check_authority(req.uri(), req.headers(), &entry.host, entry.port) {
        return Ok(d.deny(StatusCode::MISDIRECTED_REQUEST, Reason::Misdirected(x, e)));
    }
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    inject(&mut parts.headers, &entry.creds);
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let authority = if entry.port == 443 {
        entry.host.clone()
    } else {
        format!("{}:{}", entry.host, entry.port)
    };
    let result = match &conn.sender {
        Sender::H2(s) => {
            parts.headers.remove(hyper::header::HOST);
            parts.uri = match format!("https://{authority}{path}").parse::<Uri>() {
                Ok(u) => u,
                Err(_) => return Ok(d.deny(StatusCode::BAD_REQUEST, Reason::BadPath)),
            };
            parts.version = hyper::Version::HTTP_2;
            let mut s = s.clone();
            s.send_request(Request::from_parts(parts, body)).await
        }
        Sender::H1(s) => {
            match hyper::header::HeaderValue::from_str(&authority) {
                Ok(v) => {
                    parts.headers.insert(hyper::header::HOST, v);
                }
                Err(_) => return Ok(d.deny(StatusCode::BAD_REQUEST, Reason::BadPath)),
            }
            parts.uri = match path.parse::<Uri>() {
                Ok(u) => u,
                Err(_) => return Ok(d.deny(StatusCode::BAD_REQUEST, Reason::BadPath)),
            };
            parts.version = hyper::Version::HTTP_11;
            let mut s = s.lock().await;
            match s.ready().await {
                Ok(()) => s.send_request(Request::from_parts(parts, body)).await,
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(resp) => {
            let (mut rparts, rbody) = resp.into_parts();
            strip_hop_by_hop(&mut rparts.headers);
            x.status = Some(rparts.status.as_u16());
            // The upstream address is in the connection's own event.
            d.record(Verdict::Allow, Reason::Injected(x), None, None, 0, 0);
            Ok(Response::from_parts(rparts, rbody.boxed()))
        }
        Err(e) => {
            // hyper's error text names the failure, never a header.
            let msg = e.to_string();
            Ok(d.deny(StatusCode::BAD_GATEWAY, Reason::InjectUpstream(x, msg)))
        }
    }
}
