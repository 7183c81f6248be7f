//! The server namespace: HTTP origins, bulk sink/source, echo.

use anyhow::{Context as _, Result};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::rig::enter_netns;
use super::{
    BODY, BULK_PORT, ECHO_PORT, ORIGIN_DIRECT, ORIGIN_NONO, ORIGIN_NONO_CMP, ORIGIN_NONO_DIAG,
    ORIGIN_SQUID, ORIGIN_TINYPROXY, SERVER_V4,
};

pub(super) struct Server {
    /// Accepted connections per HTTP origin port.
    pub(super) accepts: HashMap<u16, Arc<AtomicU64>>,
    /// Requests answered per HTTP origin port.
    pub(super) requests: HashMap<u16, Arc<AtomicU64>>,
    pub(super) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub(super) fn start(ns: &str) -> Result<Self> {
        let ns = ns.to_string();
        let ports = [
            ORIGIN_DIRECT,
            ORIGIN_NONO,
            ORIGIN_TINYPROXY,
            ORIGIN_SQUID,
            ORIGIN_NONO_DIAG,
            ORIGIN_NONO_CMP,
            ORIGIN_NONO_CMP + 1,
            ORIGIN_NONO_CMP + 2,
            ORIGIN_NONO_CMP + 3,
        ];
        let accepts: HashMap<u16, Arc<AtomicU64>> =
            ports.iter().map(|&p| (p, Arc::default())).collect();
        let requests: HashMap<u16, Arc<AtomicU64>> =
            ports.iter().map(|&p| (p, Arc::default())).collect();
        let (a2, r2) = (accepts.clone(), requests.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::spawn(move || {
            let rt = match enter_netns(&ns).and_then(|()| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(Into::into)
            }) {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let bind =
                    |port: u16| tokio::net::TcpListener::bind(SocketAddrV4::new(SERVER_V4, port));
                let mut listeners = Vec::new();
                for p in ports.iter().chain(&[BULK_PORT, ECHO_PORT]) {
                    match bind(*p).await {
                        Ok(l) => listeners.push((*p, l)),
                        Err(e) => {
                            let _ =
                                ready_tx.send(Err(anyhow::anyhow!("bind {SERVER_V4}:{p}: {e}")));
                            return;
                        }
                    }
                }
                for (port, l) in listeners {
                    let acc = a2.get(&port).cloned();
                    let req = r2.get(&port).cloned();
                    tokio::spawn(async move {
                        loop {
                            let Ok((s, _)) = l.accept().await else {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            };
                            let _ = s.set_nodelay(true);
                            match (port, &acc, &req) {
                                (BULK_PORT, _, _) => {
                                    tokio::spawn(bulk_conn(s));
                                }
                                (ECHO_PORT, _, _) => {
                                    tokio::spawn(echo_conn(s));
                                }
                                (_, Some(a), Some(r)) => {
                                    a.fetch_add(1, Ordering::Relaxed);
                                    tokio::spawn(http_conn(s, r.clone()));
                                }
                                _ => {}
                            }
                        }
                    });
                }
                let _ = ready_tx.send(Ok(()));
                let _ = stop_rx.await;
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the server thread did not start")??;
        Ok(Self {
            accepts,
            requests,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub(super) fn counts(&self, port: u16) -> (u64, u64) {
        (
            self.accepts[&port].load(Ordering::Relaxed),
            self.requests[&port].load(Ordering::Relaxed),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn find_subslice(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// A minimal HTTP/1.x origin: answers every request with [`BODY`], keeps
/// the connection open unless the request asks otherwise (HTTP/1.0 without
/// keep-alive, or `Connection: close`). Handles pipelining.
async fn http_conn(mut s: tokio::net::TcpStream, requests: Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut rd = vec![0u8; 16 * 1024];
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut close = false;
        while let Some(end) = find_subslice(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let mut lines = head.split("\r\n");
            let http10 = lines.next().is_some_and(|l| l.ends_with("http/1.0"));
            let mut conn_close = http10;
            let mut body_len = 0usize;
            for l in lines {
                if let Some((k, v)) = l.split_once(':') {
                    let v = v.trim();
                    match k.trim() {
                        "connection" | "proxy-connection" => {
                            if v.contains("close") {
                                conn_close = true;
                            } else if v.contains("keep-alive") {
                                conn_close = false;
                            }
                        }
                        "content-length" => body_len = v.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            if buf.len() < end + 4 + body_len {
                break;
            }
            buf.drain(..end + 4 + body_len);
            requests.fetch_add(1, Ordering::Relaxed);
            let _ = write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
                BODY.len(),
                if conn_close {
                    "Connection: close\r\n"
                } else if http10 {
                    "Connection: keep-alive\r\n"
                } else {
                    ""
                }
            );
            out.extend_from_slice(BODY);
            if conn_close {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            let _ = s.shutdown().await;
            return;
        }
        match s.read(&mut rd).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&rd[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    }
}

/// Bulk protocol: 1 byte `U` or `D`, then the size as u64 little endian.
/// `U`: the server reads that many bytes, then answers the count (u64 LE).
/// `D`: the server sends that many bytes and half-closes.
async fn bulk_conn(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut hdr = [0u8; 9];
    if s.read_exact(&mut hdr).await.is_err() {
        return;
    }
    let size = u64::from_le_bytes(hdr[1..9].try_into().unwrap_or_default());
    let mut buf = vec![0x5au8; 256 * 1024];
    match hdr[0] {
        b'U' => {
            let mut got = 0u64;
            while got < size {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n as u64,
                }
            }
            let _ = s.write_all(&got.to_le_bytes()).await;
            let _ = s.shutdown().await;
        }
        b'D' => {
            let mut left = size;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                left -= n as u64;
            }
            let _ = s.shutdown().await;
            // Wait for the client to close so the last bytes are not reset.
            let _ = s.read(&mut buf).await;
        }
        _ => {}
    }
}

async fn echo_conn(mut s: tokio::net::TcpStream) {
    let (mut r, mut w) = s.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}
