//! The per-sandbox filtering HTTP proxy (CONNECT + absolute-form HTTP/1.1).
//!
//! The kernel layer lets the sandbox reach loopback and nothing else; this
//! proxy, on loopback, is therefore the only way out, and it only goes where
//! the domain rules allow.
//!
//! A library of its own (rather than a module of `nono-agent`) so that the
//! fuzz targets and tests link exactly the code the agent runs. It knows
//! nothing of the command line: callers fill a [`ProxyConfig`], start it with
//! [`start`] or [`start_loopback`], receive a [`ProxyEvent`] per decision
//! through their [`EventSink`], and [`Running::stop`] it.
//!
//! A CONNECT to a host with a credential ([`ProxyConfig::credentials`]) is
//! intercepted instead of tunnelled: see [`mitm`].
//!
//! Errors are `thiserror` enums, one per module. The parse errors, refusals
//! and request errors include the inner error's text in their own message
//! (that message is what clap, profile errors, 403 bodies and event reasons
//! show, byte for byte as before), so they do not also report it as
//! `source()`, which `{:#}` would print twice; only the start-up [`Error`]
//! keeps the system's error as its source.

pub mod dns;
pub mod event;
mod forward;
pub mod mitm;
pub mod pattern;
pub mod policy;
mod pool;
pub mod request;
pub mod resolver;
mod server;
mod splice;
pub mod transparent;
mod trim;
mod tunnel;
pub mod upstream;

use std::io::Read as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use dns::Pin;
pub use event::{EventSink, Exchange, Hook, ProxyEvent, Reason, Verdict};
pub use pattern::{parse_allow, DomainRule, Origin};
pub use policy::{never_allowed, parse_allow_cidr, CidrRule, ProxyPolicy, Refusal, Rule, Target};
pub use server::Limits;
pub use upstream::Upstream;

use server::State;

/// Everything the proxy needs to know, as plain data.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// Domain and address rules.
    pub policy: ProxyPolicy,
    /// Names resolved without DNS (`--resolve`).
    pub pins: Vec<Pin>,
    /// Ask this DNS server instead of the system resolver.
    pub dns_server: Option<SocketAddr>,
    /// Required `Proxy-Authorization: Basic nono:SECRET`, if any.
    pub secret: Option<String>,
    /// Chain every allowed request to this proxy instead of connecting
    /// directly.
    pub upstream: Option<Upstream>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// Sandbox id, copied into every event.
    pub sandbox: String,
    /// Audit mode: what the rules refuse (and a rule could allow) is let
    /// through and recorded as would-deny ([`Refusal::auditable`]);
    /// addresses no rule opens and the host configuration's denials stay
    /// refused.
    pub audit: bool,
    /// Credentials to inject: a CONNECT to one of their hosts is
    /// intercepted ([`mitm`]).
    pub credentials: Vec<mitm::Credential>,
    /// Certificates trusted besides the system's when re-originating TLS
    /// to a credential host (`--upstream-ca`).
    pub upstream_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// Why the proxy could not start. The system's reason is the error's
/// source (printed after the message by `{:#}`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listening socket could not be opened.
    #[error("proxy: listening on {addr}")]
    Listen {
        /// The address as asked for (`127.0.0.1` for the loopback proxy).
        addr: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The `--dns-server` resolver could not be built.
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    /// Credential interception could not be set up.
    #[error("credential injection")]
    Mitm(#[source] mitm::MitmError),
    /// No randomness for the secret.
    #[error("reading /dev/urandom for the proxy secret")]
    Secret(#[source] std::io::Error),
}

/// A running proxy.
pub struct Running {
    /// The addresses it listens on.
    pub addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    state: Arc<State>,
}

impl Running {
    /// The sandbox CA's certificate (PEM) when credentials are intercepted:
    /// the sandbox must trust it.
    pub fn ca_pem(&self) -> Option<&str> {
        self.state.mitm.as_ref().map(|m| m.ca_pem())
    }

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

impl Running {
    /// Also serves connections the kernel redirects to the proxy
    /// (transparent mode) on 127.0.0.1 and, on the same port when possible,
    /// ::1, with the same rules, events and shutdown. `original` says where
    /// each was dialled; `pool` is the sandbox resolver's synthetic
    /// addresses (the names behind them). Returns the listening addresses.
    pub async fn listen_transparent(
        &mut self,
        original: transparent::OriginalDst,
        pool: Arc<std::sync::Mutex<resolver::FakeIps>>,
    ) -> Result<Vec<SocketAddr>, Error> {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(listen_error("127.0.0.1"))?;
        let v4_addr = v4.local_addr().map_err(listen_error("127.0.0.1"))?;
        let mut addrs = vec![v4_addr];
        let serve = |l| {
            tokio::spawn(transparent::server::serve(
                l,
                self.state.clone(),
                original.clone(),
                pool.clone(),
            ))
        };
        self.tasks.push(serve(v4));
        if let Ok(v6) = TcpListener::bind((Ipv6Addr::LOCALHOST, v4_addr.port())).await {
            if let Ok(a) = v6.local_addr() {
                addrs.push(a);
                self.tasks.push(serve(v6));
            }
        }
        Ok(addrs)
    }
}

fn listen_error(addr: impl ToString) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Listen {
        addr: addr.to_string(),
        source,
    }
}

/// Starts the proxy on the given addresses (port 0 = ephemeral), for the
/// standalone `proxy` command.
pub async fn start(
    config: ProxyConfig,
    listen: &[SocketAddr],
    events: Arc<dyn EventSink>,
) -> Result<Running, Error> {
    let state = Arc::new(State::new(config, events)?);
    let mut addrs = Vec::new();
    let mut tasks = vec![trim::spawn()];
    for a in listen {
        let l = TcpListener::bind(a).await.map_err(listen_error(a))?;
        addrs.push(l.local_addr().map_err(listen_error(a))?);
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
pub async fn start_loopback(
    config: ProxyConfig,
    events: Arc<dyn EventSink>,
) -> Result<Running, Error> {
    let state = Arc::new(State::new(config, events)?);
    let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(listen_error("127.0.0.1"))?;
    let v4_addr = v4.local_addr().map_err(listen_error("127.0.0.1"))?;
    let mut addrs = vec![v4_addr];
    let mut tasks = vec![
        trim::spawn(),
        tokio::spawn(server::serve(v4, state.clone())),
    ];
    // ::1 is optional (IPv6 may be disabled); clients use the 127.0.0.1 URL.
    if let Ok(v6) = TcpListener::bind((Ipv6Addr::LOCALHOST, v4_addr.port())).await {
        if let Ok(a) = v6.local_addr() {
            addrs.push(a);
            tasks.push(tokio::spawn(server::serve(v6, state.clone())));
        }
    }
    Ok(Running {
        addrs,
        tasks,
        state,
    })
}

/// A random per-sandbox secret for the proxy URL (128 bits, hex).
pub fn new_secret() -> Result<String, Error> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(Error::Secret)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
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
