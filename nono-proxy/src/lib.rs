//! The per-sandbox filtering HTTP proxy (CONNECT + absolute-form HTTP/1.1).
//!
//! The kernel layer lets the sandbox reach loopback and nothing else; this
//! proxy, on loopback, is therefore the only way out, and it only goes where
//! the domain rules allow.

pub mod pattern;
pub mod policy;
pub mod pool;
pub mod resolve;
pub mod server;
pub mod upstream;

use anyhow::{Context as _, Result};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use server::{Limits, State};

/// A running proxy.
pub struct Running {
    /// The addresses it listens on.
    pub addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    state: Arc<State>,
}

impl Running {
    /// Stops accepting, closes every open tunnel and waits (up to 2 s) for
    /// the connection tasks to finish, so each records its event.
    pub async fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.state.shutdown.cancel();
        self.state.pool.clear();
        self.state.tasks.close();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), self.state.tasks.wait()).await;
    }
}

/// Starts the proxy on the given addresses (port 0 = ephemeral).
pub async fn start(state: State, listen: &[SocketAddr]) -> Result<Running> {
    let state = Arc::new(state);
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for a in listen {
        let l = TcpListener::bind(a)
            .await
            .with_context(|| format!("proxy: listening on {a}"))?;
        addrs.push(l.local_addr()?);
        tasks.push(tokio::spawn(server::serve(l, state.clone())));
    }
    Ok(Running {
        addrs,
        tasks,
        state,
    })
}

/// Starts the sandbox's proxy on 127.0.0.1 and, on the same port when
/// possible, ::1.
pub async fn start_loopback(state: State) -> Result<Running> {
    let state = Arc::new(state);
    let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("proxy: listening on 127.0.0.1")?;
    let port = v4.local_addr()?.port();
    let mut addrs = vec![v4.local_addr()?];
    let mut tasks = vec![tokio::spawn(server::serve(v4, state.clone()))];
    // ::1 is optional (IPv6 may be disabled); clients use the 127.0.0.1 URL.
    if let Ok(v6) = TcpListener::bind((Ipv6Addr::LOCALHOST, port)).await {
        addrs.push(v6.local_addr()?);
        tasks.push(tokio::spawn(server::serve(v6, state.clone())));
    }
    Ok(Running {
        addrs,
        tasks,
        state,
    })
}

/// A random per-sandbox secret for the proxy URL (128 bits, hex).
pub fn new_secret() -> Result<String> {
    crate::util::random_hex(16, "the proxy secret")
}

/// The environment a sandboxed command gets so that HTTP clients use the
/// proxy. `NO_PROXY` keeps loopback traffic direct (it is allowed anyway).
pub fn child_env(port: u16, secret: &str) -> Vec<(String, String)> {
    let url = format!("http://nono:{secret}@127.0.0.1:{port}");
    let no_proxy = "localhost,127.0.0.1,::1,[::1]".to_string();
    let mut v = Vec::new();
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        v.push((k.to_string(), url.clone()));
        v.push((k.to_ascii_lowercase(), url.clone()));
    }
    v.push(("NO_PROXY".into(), no_proxy.clone()));
    v.push(("no_proxy".into(), no_proxy));
    v.push(("NODE_USE_ENV_PROXY".into(), "1".into()));
    v
}
