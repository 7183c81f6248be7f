//! Serving [`answer`](super::answer) over UDP and TCP on loopback. The
//! kernel hooks (transparent mode) send the sandbox's port-53 traffic
//! here; nothing here ever sends a query anywhere.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::answer::{answer_audited, Outcome};
use super::fake_ip::FakeIps;
use crate::policy::ProxyPolicy;

/// TCP connections served at once (a client opening more waits in the
/// listen queue).
pub const MAX_TCP: usize = 64;
/// A TCP connection idle this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// Why the resolver could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the UDP or TCP socket failed.
    #[error("DNS resolver: binding {what} on {addr}")]
    Bind {
        /// "UDP" or "TCP".
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
}

/// Receives every decision (and the client's address), for events.
pub type OutcomeSink = Arc<dyn Fn(&Outcome, SocketAddr) + Send + Sync>;

/// What the resolver answers from: the proxy's rules and the sandbox's
/// pool (shared with the proxy, which maps addresses back to names).
pub struct Resolver {
    /// The same rules the proxy applies.
    pub policy: Arc<ProxyPolicy>,
    /// The sandbox's synthetic addresses.
    pub pool: Arc<Mutex<FakeIps>>,
    /// Told of every decision.
    pub sink: OutcomeSink,
    /// Audit mode (see [`super::answer::answer_audited`]).
    pub audit: bool,
}

impl Resolver {
    fn answer(&self, query: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let a = {
            // A poisoned lock means a panic mid-assignment elsewhere: the
            // pool itself is still consistent (assign pushes, then maps).
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            answer_audited(&self.policy, &mut pool, query, self.audit)?
        };
        (self.sink)(&a.outcome, from);
        Some(a.response)
    }
}

/// The running resolver: one UDP socket and one TCP listener on the same
/// loopback port.
pub struct Running {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Running {
    /// Stops serving and waits for the open TCP connections to close.
    pub async fn stop(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Binds UDP on `addr` (port 0: any) and TCP on the same port, and serves
/// both until [`Running::stop`].
pub async fn start(addr: SocketAddr, resolver: Resolver) -> Result<Running, ServerError> {
    let bind_err = |what, addr, source| ServerError::Bind { what, addr, source };
    // TCP on the port UDP got can be taken in between: try a few ports.
    let mut tries = 0;
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| bind_err("UDP", addr, e))?;
        let got = udp.local_addr().map_err(|e| bind_err("UDP", addr, e))?;
        match TcpListener::bind(got).await {
            Ok(t) => break (udp, t),
            Err(e) if addr.port() == 0 && tries < 8 => {
                tries += 1;
                let _ = e;
            }
            Err(e) => return Err(bind_err("TCP", got, e)),
        }
    };
    let local = udp.local_addr().map_err(|e| bind_err("UDP", addr, e))?;
    let resolver = Arc::new(resolver);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(serve_udp(udp, resolver.clone(), stop.clone()));
    tasks.spawn(serve_tcp(tcp, resolver, stop.clone(), tasks.clone()));
    Ok(Running {
        addr: local,
        stop,
        tasks,
    })
}

async fn serve_udp(sock: UdpSocket, r: Arc<Resolver>, stop: CancellationToken) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, from) = tokio::select! {
            _ = stop.cancelled() => return,
            got = sock.recv_from(&mut buf) => match got {
                Ok(x) => x,
                // ICMP errors from earlier replies surface here: go on.
                Err(_) => continue,
            },
        };
        if let Some(resp) = r.answer(&buf[..n], from) {
            let _ = sock.send_to(&resp, from).await;
        }
    }
}

async fn serve_tcp(l: TcpListener, r: Arc<Resolver>, stop: CancellationToken, tasks: TaskTracker) {
    let slots = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = slots.clone().acquire_owned() => p,
        };
        let Ok(permit) = permit else {
            return;
        };
        let (conn, from) = tokio::select! {
            _ = stop.cancelled() => return,
            got = l.accept() => match got {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let (r, stop) = (r.clone(), stop.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = serve_conn(conn, from, &r) => {}
            }
            drop(permit);
        });
    }
}

/// RFC 1035 §4.2.2: each message prefixed by its two-byte length.
async fn serve_conn(mut conn: TcpStream, from: SocketAddr, r: &Resolver) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, conn.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            _ => return,
        };
        match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut buf[..len])).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(resp) = r.answer(&buf[..len], from) else {
            continue;
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&resp);
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn resolver(seen: Arc<AtomicUsize>) -> Resolver {
        Resolver {
            policy: Arc::new(ProxyPolicy {
                allow: vec!["api.example.com".parse().unwrap()],
                ..Default::default()
            }),
            pool: Arc::new(Mutex::new(FakeIps::default())),
            sink: Arc::new(move |_, _| {
                seen.fetch_add(1, Ordering::SeqCst);
            }),
            audit: false,
        }
    }

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    #[tokio::test]
    async fn answers_over_udp_and_tcp_on_one_port() {
        let seen = Arc::new(AtomicUsize::new(0));
        let running = start("127.0.0.1:0".parse().unwrap(), resolver(seen.clone()))
            .await
            .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(&query("api.example.com."), running.addr)
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = c.recv(&mut buf).await.unwrap();
        let r = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);

        let mut t = TcpStream::connect(running.addr).await.unwrap();
        for name in ["evil.test.", "api.example.com."] {
            let q = query(name);
            t.write_u16(q.len() as u16).await.unwrap();
            t.write_all(&q).await.unwrap();
            let len = t.read_u16().await.unwrap();
            let mut b = vec![0u8; len as usize];
            t.read_exact(&mut b).await.unwrap();
            let r = Message::from_vec(&b).unwrap();
            let want = if name.starts_with("evil") {
                ResponseCode::NXDomain
            } else {
                ResponseCode::NoError
            };
            assert_eq!(r.metadata.response_code, want, "{name}");
        }
        assert_eq!(seen.load(Ordering::SeqCst), 3);
        drop(t);
        running.stop().await;
    }

    #[tokio::test]
    async fn stop_closes_idle_tcp_connections() {
        let running = start(
            "127.0.0.1:0".parse().unwrap(),
            resolver(Arc::new(AtomicUsize::new(0))),
        )
        .await
        .unwrap();
        let mut t = TcpStream::connect(running.addr).await.unwrap();
        // Let the server accept it, then stop: stop must not wait TCP_IDLE.
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::timeout(Duration::from_secs(5), running.stop())
            .await
            .expect("stop returns promptly");
        let mut b = [0u8; 1];
        assert_eq!(t.read(&mut b).await.unwrap_or(0), 0);
    }
}
