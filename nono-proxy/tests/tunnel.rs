//! CONNECT tunnels over loopback, through the real proxy: every byte
//! arrives (the receiving end checks it), bytes sent right behind the
//! CONNECT head go first, half-closes pass through either way, a reset or
//! an idle tunnel ends it, stopping the proxy ends it, and the event counts
//! exactly what moved.

// Test code: a panic in a helper is a failed test (clippy's
// allow-unwrap-in-tests covers only the test functions themselves).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nono_proxy::event::TunnelEnd;
use nono_proxy::{Limits, ProxyConfig, ProxyEvent, ProxyPolicy, Reason, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

struct Lab {
    proxy: Option<nono_proxy::Running>,
    events: mpsc::UnboundedReceiver<ProxyEvent>,
    /// The "allowed host" the tests run: accepted connections come here.
    origin: TcpListener,
}

/// The proxy allowing `api.example.com` (pinned to loopback, which an
/// allow-cidr lets through) on the port of a fresh listener.
async fn lab(idle: Duration) -> Lab {
    lab_with(Limits {
        idle_timeout: idle,
        ..Default::default()
    })
    .await
}

/// [`lab`] with these limits.
async fn lab_with(limits: Limits) -> Lab {
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = origin.local_addr().unwrap().port();
    let config = ProxyConfig {
        policy: ProxyPolicy {
            allow: vec![format!("api.example.com:{port}").parse().unwrap()],
            cidrs: vec![format!("127.0.0.1/32:{port}").parse().unwrap()],
            ..Default::default()
        },
        pins: vec!["api.example.com=127.0.0.1".parse().unwrap()],
        sandbox: "t".into(),
        limits,
        ..Default::default()
    };
    let (tx, events) = mpsc::unbounded_channel();
    let proxy = nono_proxy::start_loopback(config, Arc::new(tx))
        .await
        .unwrap();
    Lab {
        proxy: Some(proxy),
        events,
        origin,
    }
}

impl Lab {
    fn proxy_addr(&self) -> SocketAddr {
        self.proxy.as_ref().unwrap().addrs[0]
    }

    /// Opens a tunnel sending `early` in the same write as the CONNECT
    /// head; returns the client end (past the 200) and the origin's end.
    async fn tunnel(&self, early: &[u8]) -> (TcpStream, TcpStream) {
        let port = self.origin.local_addr().unwrap().port();
        let mut c = TcpStream::connect(self.proxy_addr()).await.unwrap();
        let mut req = format!(
            "CONNECT api.example.com:{port} HTTP/1.1\r\nHost: api.example.com:{port}\r\n\r\n"
        )
        .into_bytes();
        req.extend_from_slice(early);
        c.write_all(&req).await.unwrap();
        let (o, _) = self.origin.accept().await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(c.read(&mut b).await.unwrap(), 1, "closed before the 200");
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
        (c, o)
    }

    async fn event(&mut self) -> ProxyEvent {
        tokio::time::timeout(Duration::from_secs(20), self.events.recv())
            .await
            .expect("an event")
            .expect("the proxy runs")
    }
}

/// A pattern that shows reordering and loss: byte i of stream `seed`.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

/// Reads until the end of the stream (or 20 s, a failure).
async fn read_to_end(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut v = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut v))
        .await
        .expect("the stream ends")
        .expect("no error");
    v
}

fn assert_tunnel_event(e: &ProxyEvent, end: TunnelEnd, up: u64, down: u64) {
    assert_eq!(e.verdict, Verdict::Allow, "{e:?}");
    assert_eq!(e.hook.name(), "connect");
    assert!(
        matches!(&e.reason, Reason::Tunnel(x) if *x == end),
        "{:?}",
        e.reason
    );
    assert_eq!((e.bytes_up, e.bytes_down), (up, down), "{e:?}");
}

#[tokio::test]
async fn megabytes_both_ways_arrive_intact_and_are_counted() {
    let mut lab = lab(Duration::from_secs(60)).await;
    let up = pattern(1, 6 << 20);
    let down = pattern(2, 5 << 20);
    // The first KiB rides in the CONNECT's own segment (hyper reads it with
    // the head): it must still reach the origin first.
    let (c, o) = lab.tunnel(&up[..1024]).await;
    let (mut cr, mut cw) = c.into_split();
    let (mut or, mut ow) = o.into_split();
    let rest = up[1024..].to_vec();
    let down2 = down.clone();
    let send_up = tokio::spawn(async move {
        cw.write_all(&rest).await.unwrap();
        cw.shutdown().await.unwrap();
        cw
    });
    let send_down = tokio::spawn(async move {
        ow.write_all(&down2).await.unwrap();
        ow.shutdown().await.unwrap();
        ow
    });
    let (got_up, got_down) = tokio::join!(read_to_end(&mut or), read_to_end(&mut cr));
    let _keep = (send_up.await.unwrap(), send_down.await.unwrap());
    assert!(
        got_up == up,
        "the origin got {} bytes, not the {} sent",
        got_up.len(),
        up.len()
    );
    assert!(
        got_down == down,
        "the client got {} bytes, not the {} sent",
        got_down.len(),
        down.len()
    );
    let e = lab.event().await;
    assert_tunnel_event(&e, TunnelEnd::Closed, up.len() as u64, down.len() as u64);
}

#[tokio::test]
async fn the_client_half_closes_and_still_reads_the_answer() {
    let mut lab = lab(Duration::from_secs(60)).await;
    let (mut c, mut o) = lab.tunnel(b"").await;
    c.write_all(b"question").await.unwrap();
    c.shutdown().await.unwrap();
    // The origin reads the question and the end of it...
    assert_eq!(read_to_end(&mut o).await, b"question");
    // ...and answers on its side, which is still open.
    o.write_all(b"answer after your end").await.unwrap();
    o.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut c).await, b"answer after your end");
    let e = lab.event().await;
    assert_tunnel_event(&e, TunnelEnd::Closed, 8, 21);
}

#[tokio::test]
async fn the_origin_half_closes_and_still_reads_the_client() {
    let mut lab = lab(Duration::from_secs(60)).await;
    let (mut c, mut o) = lab.tunnel(b"").await;
    o.write_all(b"banner").await.unwrap();
    o.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut c).await, b"banner");
    c.write_all(b"still talking").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut o).await, b"still talking");
    let e = lab.event().await;
    assert_tunnel_event(&e, TunnelEnd::Closed, 13, 6);
}

#[tokio::test]
async fn a_reset_by_the_origin_ends_the_tunnel() {
    let mut lab = lab(Duration::from_secs(60)).await;
    let (mut c, o) = lab.tunnel(b"").await;
    c.write_all(b"hello").await.unwrap();
    // Linger 0: close sends a reset instead of a FIN.
    #[allow(deprecated)] // tokio warns that close blocks with a linger; 0 does not
    o.set_linger(Some(Duration::ZERO)).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(o);
    // The client's end closes too (end of stream or a reset), although the
    // client never closed its side.
    let mut b = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(20), c.read(&mut b))
        .await
        .expect("the client's end closes");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let e = lab.event().await;
    assert_eq!(e.verdict, Verdict::Allow);
    assert!(
        matches!(&e.reason, Reason::Tunnel(TunnelEnd::Closed)),
        "{:?}",
        e.reason
    );
    assert_eq!(e.bytes_up, 5);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let mut lab = lab(Duration::from_millis(300)).await;
    let (mut c, mut o) = lab.tunnel(b"").await;
    c.write_all(b"x").await.unwrap();
    let e = lab.event().await;
    assert_tunnel_event(&e, TunnelEnd::IdleTimeout, 1, 0);
    // Both ends see the close.
    let mut b = [0u8; 1];
    assert_eq!(o.read(&mut b).await.unwrap(), 1);
    assert!(matches!(o.read(&mut b).await, Ok(0) | Err(_)));
    assert!(matches!(c.read(&mut b).await, Ok(0) | Err(_)));
}

#[tokio::test]
async fn stopping_the_proxy_closes_open_tunnels() {
    let mut lab = lab(Duration::from_secs(60)).await;
    let (mut c, mut o) = lab.tunnel(b"").await;
    o.write_all(b"hi").await.unwrap();
    let mut b = [0u8; 2];
    c.read_exact(&mut b).await.unwrap();
    lab.proxy.take().unwrap().stop().await;
    let e = lab.event().await;
    assert_tunnel_event(&e, TunnelEnd::SandboxEnded, 0, 2);
    assert!(matches!(c.read(&mut b).await, Ok(0) | Err(_)));
}

/// Reads a response head (up to the blank line) from `c`.
async fn head(c: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut b))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(n, 1, "closed before a head: {head:?}");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A tunnel keeps its client connection's place among
/// `max_connections` until it closes: a sandbox cannot open tunnels past
/// the limit (until the proxy runs out of descriptors) by letting each
/// CONNECT become a tunnel. The places are the proxy's, not each
/// listener's: ::1 does not give a second set. When a tunnel closes its
/// place serves a new one (over-blocking check).
#[tokio::test]
async fn open_tunnels_hold_their_connection_slots() {
    const N: usize = 3;
    let mut lab = lab_with(Limits {
        max_connections: N,
        ..Default::default()
    })
    .await;
    let port = lab.origin.local_addr().unwrap().port();
    let mut open = Vec::new();
    for _ in 0..N {
        let (mut c, mut o) = lab.tunnel(b"").await;
        // Each tunnel carries bytes: it is a tunnel, not a pending CONNECT.
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        o.read_exact(&mut b).await.unwrap();
        open.push((c, o));
    }
    // Every listener: 127.0.0.1 and, where the proxy has it, ::1.
    let listeners = lab.proxy.as_ref().unwrap().addrs.clone();
    for addr in &listeners {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!(
                "CONNECT api.example.com:{port} HTTP/1.1\r\nHost: api.example.com:{port}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let h = head(&mut c).await;
        assert!(
            h.starts_with("HTTP/1.1 503"),
            "CONNECT number {} through {addr} with {N} tunnels open: {h:?}",
            N + 1
        );
    }
    // The oracle: the origin was never dialled for the refused ones.
    let extra = tokio::time::timeout(Duration::from_millis(500), lab.origin.accept()).await;
    assert!(extra.is_err(), "the origin got a connection past the limit");
    // One tunnel closes (both ends): its place frees, a new tunnel works.
    let (c, o) = open.pop().unwrap();
    drop(c);
    drop(o);
    let e = lab.event().await;
    assert_tunnel_event(&e, TunnelEnd::Closed, 4, 0);
    let (mut c, mut o) = lab.tunnel(b"").await;
    c.write_all(b"again").await.unwrap();
    let mut b = [0u8; 5];
    o.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"again");
}
