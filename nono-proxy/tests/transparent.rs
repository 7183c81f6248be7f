//! The proxy's transparent listener over loopback: redirected connections
//! (the kernel's record of where they were dialled stood in for by a map
//! filled here) go to the name behind a synthetic address or named in
//! their first bytes, to that name's own addresses, with the bytes read
//! replayed; everything else is closed and recorded as a refusal.

// Test code: a panic in a helper is a failed test (clippy's
// allow-unwrap-in-tests covers only the test functions themselves).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nono_proxy::resolver::FakeIps;
use nono_proxy::{ProxyConfig, ProxyEvent, ProxyPolicy, Verdict};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// An echo server on loopback: what the "allowed host" is here.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    a
}

struct Lab {
    listen: SocketAddr,
    dialled: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>,
    pool: Arc<Mutex<FakeIps>>,
    events: mpsc::UnboundedReceiver<ProxyEvent>,
    _proxy: nono_proxy::Running,
}

/// Starts the proxy allowing `api.example.com` on `port` (pinned to
/// loopback, which an allow-cidr lets through) and its transparent side.
async fn lab(port: u16) -> Lab {
    let config = ProxyConfig {
        policy: ProxyPolicy {
            allow: vec![format!("api.example.com:{port}").parse().unwrap()],
            cidrs: vec![format!("127.0.0.1/32:{port}").parse().unwrap()],
            ..Default::default()
        },
        pins: vec!["api.example.com=127.0.0.1".parse().unwrap()],
        sandbox: "t".into(),
        ..Default::default()
    };
    let (tx, events) = mpsc::unbounded_channel();
    let mut proxy = nono_proxy::start_loopback(config, Arc::new(tx))
        .await
        .unwrap();
    let dialled: Arc<Mutex<HashMap<SocketAddr, SocketAddr>>> = Arc::default();
    let pool: Arc<Mutex<FakeIps>> = Arc::default();
    let d = dialled.clone();
    let addrs = proxy
        .listen_transparent(
            Arc::new(move |peer, _local| d.lock().unwrap().get(&peer).copied()),
            pool.clone(),
        )
        .await
        .unwrap();
    Lab {
        listen: addrs[0],
        dialled,
        pool,
        events,
        _proxy: proxy,
    }
}

impl Lab {
    /// A client connection "redirected" from `to`.
    async fn connect(&self, to: SocketAddr) -> TcpStream {
        let s = TcpStream::connect(self.listen).await.unwrap();
        self.dialled
            .lock()
            .unwrap()
            .insert(s.local_addr().unwrap(), to);
        s
    }

    async fn event(&mut self) -> ProxyEvent {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("an event")
            .expect("the proxy runs")
    }
}

/// Sends `b`, returns what comes back before the connection closes or 2 s
/// pass (empty for a closed refusal).
async fn exchange(s: &mut TcpStream, b: &[u8]) -> Vec<u8> {
    let _ = s.write_all(b).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < b.len() {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

fn hello(sni: &str) -> Vec<u8> {
    let mut ext = vec![0, 0];
    let mut list = vec![0];
    list.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    list.extend_from_slice(sni.as_bytes());
    let mut body = (list.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(&list);
    ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
    ext.extend_from_slice(&body);
    let mut hs_body = vec![0x03, 0x03];
    hs_body.extend_from_slice(&[7u8; 32]);
    hs_body.push(0);
    hs_body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    hs_body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    hs_body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(hs_body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&hs_body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

#[tokio::test]
async fn a_synthetic_address_reaches_its_name_for_any_protocol() {
    let target = echo().await;
    let mut lab = lab(target.port()).await;
    let (v4, _) = lab.pool.lock().unwrap().assign("api.example.com").unwrap();
    // A server-speaks-first style client: says something only later.
    let mut s = lab.connect(SocketAddr::new(v4.into(), target.port())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(exchange(&mut s, b"SSH-2.0-x\r\n").await, b"SSH-2.0-x\r\n");
    drop(s);
    let e = lab.event().await;
    assert_eq!(e.verdict, Verdict::Allow, "{e:?}");
    assert_eq!(e.hook.name(), "transparent");
    assert_eq!(e.host, "api.example.com");
    assert_eq!(e.addr, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
}

#[tokio::test]
async fn a_real_address_goes_to_the_named_host_never_to_the_dialled_one() {
    let target = echo().await;
    let mut lab = lab(target.port()).await;
    // Dialled 203.0.113.7 (nothing of ours there); the hello names the
    // allowed host: the proxy connects to its pinned address, and the
    // hello read while deciding is replayed to it.
    let h = hello("api.example.com");
    let mut s = lab.connect(SocketAddr::new(ELSEWHERE, target.port())).await;
    assert_eq!(exchange(&mut s, &h).await, h);
    drop(s);
    let e = lab.event().await;
    assert_eq!(e.verdict, Verdict::Allow, "{e:?}");
    assert_eq!(e.addr, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
}

#[tokio::test]
async fn refusals_close_the_connection_and_are_recorded() {
    let target = echo().await;
    let mut lab = lab(target.port()).await;
    let (v4, _) = lab.pool.lock().unwrap().assign("api.example.com").unwrap();
    let cases: Vec<(SocketAddr, Vec<u8>, &str)> = vec![
        (
            SocketAddr::new(ELSEWHERE, target.port()),
            hello("evil.example"),
            "not allowed",
        ),
        (
            SocketAddr::new(v4.into(), target.port()),
            hello("evil.example"),
            "names evil.example instead",
        ),
        (
            SocketAddr::new(Ipv4Addr::new(198, 18, 3, 3).into(), target.port()),
            b"x".to_vec(),
            "never gave out",
        ),
        (
            SocketAddr::new(ELSEWHERE, target.port()),
            b"\x00binary".to_vec(),
            "203.0.113.7",
        ),
    ];
    for (to, first, why) in cases {
        let mut s = lab.connect(to).await;
        assert_eq!(
            exchange(&mut s, &first).await,
            b"",
            "{why}: nothing comes back"
        );
        let e = lab.event().await;
        assert_eq!(e.verdict, Verdict::Deny, "{why}: {e:?}");
        assert!(
            e.reason.to_string().contains(why),
            "{why}: reason {:?}",
            e.reason.to_string()
        );
    }
    // No record of where it was dialled: refused too.
    let mut s = TcpStream::connect(lab.listen).await.unwrap();
    assert_eq!(exchange(&mut s, b"x").await, b"");
    let e = lab.event().await;
    assert_eq!(e.verdict, Verdict::Deny);
}
