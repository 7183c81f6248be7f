//! Serving redirected connections: learn where the client dialled (from
//! the kernel, through the caller's [`OriginalDst`]), read what its first
//! bytes say, decide the target ([`super::destination`]), judge it with the
//! ordinary rules and resolve it as any proxied request is (`admit`), then
//! connect to the target's own checked addresses, replay the bytes read so
//! far and copy both ways. A refused connection is closed (no HTTP answer
//! a TLS client could read) and recorded like any other refusal.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};

use super::decide::{destination, Destination};
use super::peek::{peek, Peeked, MAX_PEEK};
use crate::event::{Hook, Reason};
use crate::resolver::fake_ip::{in_pool, FakeIps};
use crate::server::{admit, dial, Recorder, State};

/// How long a connection to a real address may take to say its name.
pub const NAME_PEEK: Duration = Duration::from_secs(5);

/// Where a redirected connection was dialled, from the kernel's record of
/// it, looked up by the client socket's two ends: `(peer, local)` of the
/// accepted connection, i.e. the client's own address and the listener's.
/// `None` when there is no record.
pub type OriginalDst = Arc<dyn Fn(SocketAddr, SocketAddr) -> Option<SocketAddr> + Send + Sync>;

/// Serves redirected connections from `listener` until the task is
/// aborted.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    original: OriginalDst,
    pool: Arc<Mutex<FakeIps>>,
) {
    crate::server::accept_loop(
        listener,
        &state,
        // Over the limit: closed, as the HTTP side answers 503.
        drop,
        // The connection's task holds the slot: the tunnel runs inside it.
        |stream, peer, state, _slot| handle(stream, peer, state, original.clone(), pool.clone()),
    )
    .await;
}

async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    original: OriginalDst,
    pool: Arc<Mutex<FakeIps>>,
) {
    let started = Instant::now();
    let local = match client.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    // The lookup may ask the kernel or the daemon: off the async workers.
    let dialled = tokio::task::spawn_blocking(move || original(peer, local))
        .await
        .ok()
        .flatten();
    let Some(dialled) = dialled else {
        let d = Recorder::new(&state, Hook::Transparent, peer.ip().to_string(), 0, started);
        let _ = d.deny(hyper::StatusCode::FORBIDDEN, Reason::NoOriginalDestination);
        return;
    };
    if in_pool(dialled.ip()) {
        return serve_pool_address(client, dialled, state, pool, started).await;
    }
    let (head, peeked) = read_head(&mut client, NAME_PEEK).await;
    let head = only_one_request(head, &peeked);
    let target = {
        let pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        destination(dialled, &pool, &peeked)
    };
    let mut d = recorder(&state, &target, dialled, started);
    let Some((upstream, addr)) = open(&mut d, target).await else {
        return;
    };
    relay(d, client, head, upstream, addr).await;
}

/// The event recorder of a redirected connection, named by its target
/// (or, without one, by the address dialled).
fn recorder(
    state: &Arc<State>,
    target: &Result<Destination, super::decide::NoTarget>,
    dialled: SocketAddr,
    started: Instant,
) -> Recorder {
    let (host, port) = match target {
        Ok(Destination::Name { name, port, .. }) => (name.clone(), *port),
        Ok(Destination::Ip { ip, port }) => (ip.to_string(), *port),
        Err(_) => (dialled.ip().to_string(), dialled.port()),
    };
    let mut d = Recorder::new(state, Hook::Transparent, host, port, started);
    d.dialled = Some(dialled.ip());
    d
}

/// Judges the target and resolves it as any proxied request (a refusal is
/// recorded by `admit`; its HTTP answer is dropped: the client gets a
/// close), then connects to the target's own checked addresses. `None`:
/// refused or failed, and recorded.
async fn open(
    d: &mut Recorder,
    target: Result<Destination, super::decide::NoTarget>,
) -> Option<(TcpStream, Option<std::net::IpAddr>)> {
    if let Err(e) = target {
        let _ = d.deny(hyper::StatusCode::FORBIDDEN, Reason::NoTarget(e));
        return None;
    }
    let Ok((target, addrs)) = admit(d).await else {
        return None;
    };
    match dial(d, &target, &addrs, true).await {
        Ok(x) => Some(x),
        Err(e) => {
            let _ = d.deny(hyper::StatusCode::BAD_GATEWAY, Reason::Dial(e));
            None
        }
    }
}

/// Copies both ways until the tunnel ends, the bytes read to learn or
/// check the name first (counted, inside the tunnel's idle timeout), and
/// records the allowed exchange.
async fn relay(
    d: Recorder,
    client: TcpStream,
    head: Vec<u8>,
    upstream: TcpStream,
    addr: Option<std::net::IpAddr>,
) {
    let (up, down, end) = crate::tunnel::tunnel_tcp(
        client,
        head.into(),
        upstream,
        d.state.limits.idle_timeout,
        &d.state.shutdown,
    )
    .await;
    d.allow(Reason::Tunnel(end), addr, up, down);
    crate::trim::freed();
}

/// A connection to a synthetic address: the name is known from the pool,
/// so the name's server is dialled at once (judged and resolved as any
/// proxied request) and whoever speaks first decides what comes next. The
/// client first: its first bytes are read and checked against the name
/// (an SNI or `Host` naming another host is refused before a byte is
/// forwarded). The server first (SMTP, FTP, IMAP, MySQL...): nothing to
/// check, the tunnel starts at once (such protocols used to wait 300 ms
/// for client bytes that never came). The race only peeks, so no byte is
/// lost to the side that loses it.
async fn serve_pool_address(
    mut client: TcpStream,
    dialled: SocketAddr,
    state: Arc<State>,
    pool: Arc<Mutex<FakeIps>>,
    started: Instant,
) {
    let named = {
        let pool = pool.lock().unwrap_or_else(|e| e.into_inner());
        destination(dialled, &pool, &Peeked::NeedMore)
    };
    let mut d = recorder(&state, &named, dialled, started);
    let Some((upstream, addr)) = open(&mut d, named).await else {
        return;
    };
    // `peek`, not `readable`: readiness may be reported before any byte
    // is there (a false positive tokio documents), which would make every
    // server-first connection wait out the client's silence.
    let (mut one, mut other) = ([0u8; 1], [0u8; 1]);
    // Neither side speaking is no reason to start the tunnel blind (a TLS
    // client could then send a ClientHello naming another host, unread):
    // wait for one of them, as long as an idle tunnel would live.
    let client_first = tokio::select! {
        r = client.peek(&mut one) => r.is_ok(),
        _ = upstream.peek(&mut other) => false,
        _ = tokio::time::sleep(d.state.limits.idle_timeout) => {
            d.allow(Reason::Tunnel(crate::event::TunnelEnd::IdleTimeout), addr, 0, 0);
            return;
        }
    };
    let mut head = Vec::new();
    if client_first {
        let (h, peeked) = read_head(&mut client, NAME_PEEK).await;
        let checked = if peeked == Peeked::NeedMore && !h.is_empty() {
            // A hello or request head cut short (split across packets
            // slower than NAME_PEEK): its name was never seen.
            Err(super::decide::NoTarget::Incomplete)
        } else {
            let pool = pool.lock().unwrap_or_else(|e| e.into_inner());
            destination(dialled, &pool, &peeked)
        };
        if let Err(e) = checked {
            let _ = d.deny(hyper::StatusCode::FORBIDDEN, Reason::NoTarget(e));
            return;
        }
        head = only_one_request(h, &peeked);
    }
    relay(d, client, head, upstream, addr).await;
}

/// Plain HTTP is judged by its first request: that request goes on with
/// `Connection: close`, so a second one (naming another host the same
/// server answers for) needs a new connection, judged anew (see
/// [`super::http1`]).
fn only_one_request(head: Vec<u8>, peeked: &Peeked) -> Vec<u8> {
    match peeked {
        Peeked::Http { .. } => super::http1::close_after_first(&head).unwrap_or(head),
        _ => head,
    }
}

/// Reads until the bytes say something ([`peek`] is no longer
/// `NeedMore`), [`MAX_PEEK`] bytes arrived, the client stopped sending, or
/// `wait` passed. Returns the bytes (to replay) and what they say.
async fn read_head(client: &mut TcpStream, wait: Duration) -> (Vec<u8>, Peeked) {
    let mut head = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 4096];
    loop {
        let room = MAX_PEEK.saturating_sub(head.len()).min(buf.len());
        if room == 0 {
            break;
        }
        match tokio::time::timeout_at(deadline, client.read(&mut buf[..room])).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            // EOF, error or time: what we have is all there is.
            _ => break,
        }
        if peek(&head) != Peeked::NeedMore {
            break;
        }
    }
    let peeked = peek(&head);
    (head, peeked)
}
