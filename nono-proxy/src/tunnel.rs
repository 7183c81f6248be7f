//! CONNECT tunnels: admitted like every request, then bytes moved both
//! ways (counted, with an idle timeout) until either side or the proxy ends
//! them; the event is recorded when the tunnel closes. Between two sockets
//! the kernel moves the bytes (`splice`, [`crate::splice`]); other clients
//! go through userspace buffers.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::event::{Hook, Reason, TunnelEnd};
use crate::request::RequestError;
use crate::server::{admit, dial, empty, ProxyBody, Recorder, Slot, State};
use crate::splice::{pump, MakePipe, Meter, Pipe};

/// Handles a CONNECT request: admits `host:port`, connects, answers 200 and
/// tunnels in a task of its own, which holds the client connection's
/// `slot` until the tunnel closes.
pub(crate) async fn connect(
    req: Request<Incoming>,
    state: Arc<State>,
    started: Instant,
    slot: Slot,
) -> Response<ProxyBody> {
    let uri = req.uri().clone();
    let target = match (uri.scheme(), uri.path_and_query(), uri.authority()) {
        (None, None, Some(a)) => match a.port_u16() {
            Some(p) if p != 0 => Ok((a.host().to_string(), p)),
            _ => Err(a.as_str().to_string()),
        },
        _ => Err(uri.to_string()),
    };
    let (host, port) = match target {
        Ok(t) => t,
        // Refused like any other request: answered and recorded (with what
        // the client sent as the host), so no refusal goes uncounted.
        Err(raw) => {
            let d = Recorder::new(&state, Hook::Connect, raw, 0, started);
            return d.deny(
                StatusCode::BAD_REQUEST,
                Reason::BadRequest(RequestError::ConnectTarget),
            );
        }
    };
    let mut d = Recorder::new(&state, Hook::Connect, host, port, started);
    let (target, addrs) = match admit(&mut d).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let (upstream, addr) = match dial(&d, &target, &addrs, true).await {
        Ok(x) => x,
        Err(e) => return d.deny(StatusCode::BAD_GATEWAY, Reason::Dial(e)),
    };
    state.tasks.spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                drop(slot);
                return d.allow(Reason::ClientGone(e), addr, 0, 0);
            }
        };
        // hyper's connection (and its buffers) is gone now.
        crate::trim::freed();
        let idle = d.state.limits.idle_timeout;
        let (up, down, end) = match upgraded.downcast::<TokioIo<TcpStream>>() {
            // The client's own socket: the kernel moves the bytes. What
            // hyper read past the CONNECT head goes first.
            Ok(parts) => {
                let client = parts.io.into_inner();
                tunnel_tcp(client, parts.read_buf, upstream, idle, &d.state.shutdown).await
            }
            Err(upgraded) => {
                tunnel(TokioIo::new(upgraded), upstream, idle, &d.state.shutdown).await
            }
        };
        // Free before the event: whoever sees the event may open another.
        drop(slot);
        d.allow(Reason::Tunnel(end), addr, up, down);
        crate::trim::freed();
    });
    empty(StatusCode::OK)
}

/// Copies both ways between two sockets with `splice(2)` (see
/// [`crate::splice`]), `prefix` (bytes already read from the client) first,
/// until both directions finished or nothing moved for `idle`; a finished
/// direction is half-closed on the other side, an error on either ends
/// both. Returns (client→server including `prefix`, server→client) byte
/// counts.
///
/// A plain function (not `async`): another async layer would store the
/// arguments twice in every open tunnel's task.
pub(crate) fn tunnel_tcp(
    client: TcpStream,
    prefix: Bytes,
    server: TcpStream,
    idle: Duration,
    shutdown: &CancellationToken,
) -> impl Future<Output = (u64, u64, TunnelEnd)> + '_ {
    tunnel_tcp_with(client, prefix, server, idle, shutdown, Pipe::new)
}

/// [`tunnel_tcp`] with the pipe maker as a parameter (tests make it fail).
pub(crate) async fn tunnel_tcp_with(
    client: TcpStream,
    prefix: Bytes,
    server: TcpStream,
    idle: Duration,
    shutdown: &CancellationToken,
    make_pipe: MakePipe,
) -> (u64, u64, TunnelEnd) {
    let activity = AtomicU64::new(0);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    // Pinned here and lent to `watch`, so the copy's state (most of an open
    // tunnel's memory) exists once in the task.
    let copy = std::pin::pin!(async {
        tokio::try_join!(
            pump(
                &client,
                &server,
                prefix,
                Meter {
                    read: &up,
                    activity: &activity,
                },
                make_pipe,
            ),
            pump(
                &server,
                &client,
                Bytes::new(),
                Meter {
                    read: &down,
                    activity: &activity,
                },
                make_pipe,
            ),
        )
    });
    let end = watch(copy, &activity, idle, shutdown).await;
    (
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
        end,
    )
}

/// Runs `copy` until it finishes, the proxy stops, or `activity` did not
/// change for `idle`.
async fn watch<F: Future>(
    mut copy: Pin<&mut F>,
    activity: &AtomicU64,
    idle: Duration,
    shutdown: &CancellationToken,
) -> TunnelEnd {
    let mut last_seen = 0;
    loop {
        tokio::select! {
            _ = copy.as_mut() => break TunnelEnd::Closed,
            _ = shutdown.cancelled() => break TunnelEnd::SandboxEnded,
            _ = tokio::time::sleep(idle) => {
                let now = activity.load(Ordering::Relaxed);
                if now == last_seen {
                    break TunnelEnd::IdleTimeout;
                }
                last_seen = now;
            }
        }
    }
}

/// Per-direction copy buffer of a tunnel whose client is not a plain
/// socket (the generic path, [`tunnel`]). 16 KiB keeps 1,000 busy tunnels
/// near 30 MB (64 KiB buffers measured 134 MB) at some CPU cost per GiB.
const TUNNEL_BUF: usize = 16 * 1024;

/// Copies both ways through userspace buffers (for a client that is not a
/// plain socket) until both directions finished or nothing moved for
/// `idle`; a finished direction is half-closed on the other side. Returns
/// (client→server, server→client) byte counts.
pub(crate) async fn tunnel<C>(
    client: C,
    server: TcpStream,
    idle: Duration,
    shutdown: &CancellationToken,
) -> (u64, u64, TunnelEnd)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(AtomicU64::new(0));
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let mut client = Activity::new(client, activity.clone(), up.clone());
    let mut server = Activity::new(server, activity.clone(), down.clone());
    let copy = std::pin::pin!(tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut server,
        TUNNEL_BUF,
        TUNNEL_BUF
    ));
    let end = watch(copy, &activity, idle, shutdown).await;
    (
        up.load(Ordering::Relaxed),
        down.load(Ordering::Relaxed),
        end,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// A connected loopback pair (a, b).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn no_pipes() -> std::io::Result<Pipe> {
        Err(std::io::Error::from_raw_os_error(
            nix::errno::Errno::EMFILE as i32,
        ))
    }

    /// client ⇄ [proxy: tunnel_tcp_with] ⇄ server; returns the outer ends
    /// and the tunnel's task.
    async fn rig(
        prefix: &'static [u8],
        make_pipe: MakePipe,
    ) -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<(u64, u64, TunnelEnd)>,
    ) {
        let (client, proxy_client) = pair().await;
        let (proxy_server, server) = pair().await;
        let t = tokio::spawn(async move {
            tunnel_tcp_with(
                proxy_client,
                Bytes::from_static(prefix),
                proxy_server,
                Duration::from_secs(60),
                &CancellationToken::new(),
                make_pipe,
            )
            .await
        });
        (client, server, t)
    }

    #[tokio::test]
    async fn without_pipes_the_bytes_still_move_and_half_close() {
        // A sandbox that used up the proxy's descriptors must not get a
        // tunnel that silently drops data: the fallback copy carries it.
        let (mut c, mut s, t) = rig(b"early ", no_pipes).await;
        let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let big2 = big.clone();
        let w = tokio::spawn(async move {
            c.write_all(&big2).await.unwrap();
            c.shutdown().await.unwrap();
            c
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..6], b"early ");
        assert!(got[6..] == big[..], "payload differs");
        s.write_all(b"reply").await.unwrap();
        s.shutdown().await.unwrap();
        let mut c = w.await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"reply");
        let (up, down, end) = t.await.unwrap();
        assert_eq!((up, down, end), (6 + 300_000, 5, TunnelEnd::Closed));
    }

    static MADE: AtomicUsize = AtomicUsize::new(0);

    fn counted_pipe() -> std::io::Result<Pipe> {
        MADE.fetch_add(1, Ordering::SeqCst);
        Pipe::new()
    }

    #[tokio::test]
    async fn an_idle_direction_gives_its_pipe_back() {
        let (mut c, mut s, t) = rig(b"", counted_pipe).await;
        let mut b = [0u8; 3];
        c.write_all(b"one").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(MADE.load(Ordering::SeqCst), 1, "a pipe once data came");
        // Longer than PIPE_IDLE without data: the pipe is closed, and the
        // next data makes a new one (and still arrives).
        tokio::time::sleep(crate::splice::PIPE_IDLE * 2).await;
        c.write_all(b"two").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"two");
        assert_eq!(MADE.load(Ordering::SeqCst), 2, "a new pipe after idling");
        drop(c);
        drop(s);
        let (up, down, _) = t.await.unwrap();
        assert_eq!((up, down), (6, 0));
    }
}
