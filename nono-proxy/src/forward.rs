//! Absolute-form HTTP/1.1 forwarding: the request is checked and admitted,
//! sent over a pooled or new connection to a checked address (or to the
//! upstream proxy), and the response streamed back; the event is recorded
//! when the response body ends or the client goes away.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming};
use hyper::header;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::event::{Hook, Reason};
use crate::pool::Key;
use crate::request::{check_forward_request, strip_hop_by_hop};
use crate::server::{admit, dial, ProxyBody, Recorder, State};

/// Handles an absolute-form request.
pub(crate) async fn forward(
    req: Request<Incoming>,
    state: Arc<State>,
    started: Instant,
) -> Response<ProxyBody> {
    let (host, port) = match check_forward_request(req.uri(), req.headers()) {
        Ok(x) => x,
        Err(e) => {
            let d = Recorder::new(
                &state,
                Hook::Http,
                req.uri().host().unwrap_or("").to_string(),
                req.uri().port_u16().unwrap_or(80),
                started,
            );
            return d.deny(StatusCode::BAD_REQUEST, Reason::BadRequest(e));
        }
    };
    let mut d = Recorder::new(&state, Hook::Http, host, port, started);
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
                Err(e) => return d.deny(StatusCode::BAD_GATEWAY, Reason::Dial(e)),
            };
            let (sender, conn) =
                match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                    Ok(x) => x,
                    Err(e) => return d.deny(StatusCode::BAD_GATEWAY, Reason::Handshake(e)),
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
            Err(_) => return d.deny(StatusCode::BAD_REQUEST, Reason::BadPath),
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
        Ok(Err(e)) => return d.deny(StatusCode::BAD_GATEWAY, Reason::Upstream(e)),
        Err(_) => return d.deny(StatusCode::GATEWAY_TIMEOUT, Reason::UpstreamTimeout),
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let status = parts.status.as_u16();
    let done = Done {
        recorder: d,
        addr,
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
    recorder: Recorder,
    addr: Option<std::net::IpAddr>,
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
                self.recorder.state.pool.put(key, sender);
            }
        }
        self.recorder.allow(
            Reason::Forwarded {
                status: self.status,
            },
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
