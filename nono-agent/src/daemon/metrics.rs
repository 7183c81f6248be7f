//! The daemon's Prometheus metrics and the small HTTP/1.1 responder that
//! serves them (`GET /metrics`), on a unix socket and optionally on a
//! loopback TCP port.
//!
//! What they reveal: how many sandboxes run, started and ended (and why),
//! denial counts per hook and reason, dropped events, request counts and
//! latencies per request type, and the build. Never a destination, a
//! sandbox id, a uid or a policy. That is still more than every local user
//! needs to know (how busy the machine's sandboxes are, what they are
//! denied), so the unix socket is 0660 root:root unless
//! `--metrics-socket-mode` widens it, and TCP is bound to loopback only.
//!
//! Proxy verdict counters and supervisor latencies live in the clients
//! (`exec` runs the proxy and the supervisor), not here.
//!
//! Counting costs no allocation on the hot path: denial label sets are two
//! `&'static str`, found in a map that holds one entry per pair seen.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nono_common::{DenyEvent, Hook, Reason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

/// Why a sandbox ended (`nono_sandboxes_ended_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its owner asked (`end` request).
    End,
    /// Its owner's connection closed without asking.
    ClientGone,
    /// Orphaned by a restart, its owner process then exited.
    OwnerDied,
    /// Found dead when a new daemon took the pins over.
    Takeover,
}

impl EndReason {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::End => "end",
            Self::ClientGone => "client_gone",
            Self::OwnerDied => "owner_died",
            Self::Takeover => "takeover",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    hook: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    /// `ring`: the kernel ring had no room; `queue`: a sandbox's queue to
    /// its client was full.
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    r#type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    build_id: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    active: Gauge,
    started: Counter,
    ended: Family<ReasonLabel, Counter>,
    denials: Family<DenialLabels, Counter>,
    dropped: Family<DropLabel, Counter>,
    /// The kernel's ring-full count last seen (it counts since load, which
    /// may predate this daemon).
    ring_seen: AtomicU64,
    requests: Family<RequestLabels, Counter>,
    latency: Family<TypeLabel, Histogram, fn() -> Histogram>,
    log_suppressed: Counter,
}

impl Metrics {
    /// The metrics, registered, with `nono_build_info` set.
    pub fn new(build_id: &str) -> Self {
        let mut registry = Registry::default();
        let active = Gauge::default();
        let started = Counter::default();
        let ended = Family::<ReasonLabel, Counter>::default();
        let denials = Family::<DenialLabels, Counter>::default();
        let dropped = Family::<DropLabel, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Family<TypeLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let log_suppressed = Counter::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                build_id: build_id.to_string(),
            })
            .set(1);
        registry.register(
            "nono_sandboxes_active",
            "Sandboxes the daemon holds now",
            active.clone(),
        );
        registry.register(
            "nono_sandboxes_started",
            "Sandboxes created since the daemon started",
            started.clone(),
        );
        registry.register(
            "nono_sandboxes_ended",
            "Sandboxes ended since the daemon started, by why",
            ended.clone(),
        );
        registry.register(
            "nono_denials",
            "Denials read from the kernel ring, by hook and reason",
            denials.clone(),
        );
        registry.register(
            "nono_events_dropped",
            "Denial events lost: the kernel ring was full (ring) or a client's queue was (queue)",
            dropped.clone(),
        );
        registry.register(
            "nono_daemon_requests",
            "Client requests, by type and outcome",
            requests.clone(),
        );
        registry.register(
            "nono_daemon_request_seconds",
            "Time to answer a client request, by type",
            latency.clone(),
        );
        registry.register(
            "nono_denial_logs_suppressed",
            "Denials not logged because of the per-sandbox log rate limit",
            log_suppressed.clone(),
        );
        registry.register("nono_build_info", "The daemon's build", build);
        for r in [
            EndReason::End,
            EndReason::ClientGone,
            EndReason::OwnerDied,
            EndReason::Takeover,
        ] {
            let _ = ended.get_or_create(&ReasonLabel { reason: r.name() });
        }
        for stage in ["ring", "queue"] {
            let _ = dropped.get_or_create(&DropLabel { stage });
        }
        Self {
            registry,
            active,
            started,
            ended,
            denials,
            dropped,
            ring_seen: AtomicU64::new(0),
            requests,
            latency,
            log_suppressed,
        }
    }

    /// The number of live sandboxes.
    pub fn set_active(&self, n: usize) {
        self.active.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A sandbox was created.
    pub fn started(&self) {
        self.started.inc();
    }

    /// `n` sandboxes ended.
    pub fn ended(&self, why: EndReason, n: u64) {
        self.ended
            .get_or_create(&ReasonLabel { reason: why.name() })
            .inc_by(n);
    }

    /// One raw ring record (hook and reason read at their offsets); an
    /// audit record (would-deny: the operation went ahead) is no denial.
    pub fn denial(&self, raw: &[u8]) {
        let off = core::mem::offset_of!(DenyEvent, verdict);
        let verdict = raw
            .get(off..off + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_ne_bytes);
        if verdict == Some(nono_common::EVENT_WOULD_DENY) {
            return;
        }
        let (hook, reason) = hook_and_reason(raw);
        self.denials
            .get_or_create(&DenialLabels { hook, reason })
            .inc();
    }

    /// An event a client's queue had no room for.
    pub fn queue_dropped(&self) {
        self.dropped
            .get_or_create(&DropLabel { stage: "queue" })
            .inc();
    }

    /// The kernel's cumulative ring-full count (read at scrape time).
    pub fn ring_dropped(&self, total: u64) {
        let prev = self.ring_seen.swap(total, Ordering::Relaxed);
        if total > prev {
            self.dropped
                .get_or_create(&DropLabel { stage: "ring" })
                .inc_by(total - prev);
        }
    }

    /// A client request was answered.
    pub fn request(&self, kind: &'static str, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.requests
            .get_or_create(&RequestLabels {
                r#type: kind,
                outcome,
            })
            .inc();
        self.latency
            .get_or_create(&TypeLabel { r#type: kind })
            .observe(took.as_secs_f64());
    }

    /// Denials the log rate limit left out.
    pub fn log_suppressed(&self) {
        self.log_suppressed.inc();
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        if prometheus_client::encoding::text::encode_registry(&mut s, &self.registry).is_err() {
            return String::new();
        }
        to_prometheus_text(&s)
    }
}

/// Hook and reason names of a raw `DenyEvent`, read at their offsets.
pub fn hook_and_reason(raw: &[u8]) -> (&'static str, &'static str) {
    let at = |off: usize| {
        raw.get(off..off + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let hook = at(core::mem::offset_of!(DenyEvent, hook))
        .and_then(Hook::from_u32)
        .map(Hook::name)
        .unwrap_or("unknown");
    let reason = at(core::mem::offset_of!(DenyEvent, reason))
        .and_then(Reason::from_u32)
        .map(Reason::name)
        .unwrap_or("unknown");
    (hook, reason)
}

/// OpenMetrics names a counter family without `_total` and its samples
/// with it; the 0.0.4 text format wants the family named as its samples.
fn to_prometheus_text(open: &str) -> String {
    let lines: Vec<&str> = open.lines().collect();
    let mut out = String::with_capacity(open.len() + 256);
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            continue;
        }
        let counter_family = |l: &str, kind: &str| -> Option<String> {
            let name = l.strip_prefix(kind)?.split(' ').next()?.to_string();
            let ty = format!("# TYPE {name} counter");
            let is_counter = lines[i..].iter().take(2).any(|l| *l == ty);
            is_counter.then_some(name)
        };
        if let Some(name) = counter_family(line, "# HELP ") {
            out.push_str(&line.replacen(&name, &format!("{name}_total"), 1));
        } else if let Some(name) = counter_family(line, "# TYPE ") {
            out.push_str(&line.replacen(&name, &format!("{name}_total"), 1));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Where the metrics are served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The unix socket could not be set up.
    #[error("metrics socket {}", .path.display())]
    Unix {
        /// The socket.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TCP address is not a loopback one.
    #[error(
        "--metrics-listen {0}: only a loopback address (127.0.0.0/8 or ::1) is allowed; \
         put a reverse proxy in front to export metrics off the machine"
    )]
    NotLoopback(SocketAddr),
    /// The TCP port could not be bound.
    #[error("metrics listen {addr}")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Checks a `--metrics-listen` address.
pub fn check_listen(addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(MetricsError::NotLoopback(addr))
    }
}

/// Binds the unix socket (replacing a stale one) with `mode`, owned by
/// root:root.
pub fn bind_unix(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, MetricsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |source| MetricsError::Unix {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        crate::util::ensure_dir(dir, Some(0o755)).map_err(|e| err(std::io::Error::other(e)))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another daemon serves metrics there",
        )));
    }
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    std::os::unix::fs::chown(path, Some(0), Some(0)).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    tokio::net::UnixListener::from_std(l).map_err(err)
}

/// Binds the loopback TCP port.
pub async fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    let addr = check_listen(addr)?;
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Tcp { addr, source })
}

/// Scrapes served at once; more wait for a slot.
const CONCURRENT_SCRAPES: usize = 8;
/// Time to send the request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer (and so request head) limit; hyper's smallest.
const MAX_HEAD: usize = 8192;

/// What produces the page.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on a unix listener until the task is dropped.
pub async fn serve_unix(l: tokio::net::UnixListener, render: Render) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_SCRAPES));
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        spawn_exchange(s, render.clone(), slots.clone());
    }
}

/// Serves `GET /metrics` on a TCP listener until the task is dropped.
pub async fn serve_tcp(l: tokio::net::TcpListener, render: Render) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_SCRAPES));
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        spawn_exchange(s, render.clone(), slots.clone());
    }
}

fn spawn_exchange<S>(s: S, render: Render, slots: Arc<Semaphore>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let Ok(_slot) = slots.acquire_owned().await else {
            return;
        };
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let render = render.clone();
            async move { Ok::<_, Infallible>(respond(&req, &render)) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEAD_TIMEOUT)
            .max_buf_size(MAX_HEAD)
            .keep_alive(false)
            .serve_connection(TokioIo::new(s), svc);
        let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, conn).await;
    });
}

fn respond<B>(req: &Request<B>, render: &Render) -> Response<Full<Bytes>> {
    let page = |status: StatusCode, ctype: &'static str, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return page(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found; try GET /metrics\n"),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return page(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"only GET\n"),
        );
    }
    page(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(render()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(hook: u32, reason: u32) -> Vec<u8> {
        let ev = DenyEvent {
            pid: 1,
            tgid: 1,
            cgroup_id: 7,
            comm: [0; 16],
            hook,
            family: 2,
            sock_type: 1,
            protocol: 6,
            addr: [0; 16],
            port: 80,
            verdict: 0,
            reason,
        };
        // SAFETY: DenyEvent is repr(C) plain old data; viewing it as bytes
        // for its exact size is sound.
        unsafe {
            std::slice::from_raw_parts(
                (&ev as *const DenyEvent).cast::<u8>(),
                core::mem::size_of::<DenyEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn denial_labels_from_raw_offsets() {
        let r = raw(Hook::Connect4 as u32, Reason::NotAllowed as u32);
        assert_eq!(hook_and_reason(&r), ("connect4", "not-allowed"));
        assert_eq!(hook_and_reason(&r[..10]), ("unknown", "unknown"));
        assert_eq!(hook_and_reason(&raw(99, 999)), ("unknown", "unknown"));
    }

    #[test]
    fn exposition_names_counters_with_total() {
        let m = Metrics::new("abc");
        m.started();
        m.denial(&raw(Hook::Connect4 as u32, Reason::NotAllowed as u32));
        // An audit record (the connection went ahead) is no denial.
        let mut audited = raw(Hook::Connect4 as u32, Reason::NotAllowed as u32);
        let off = core::mem::offset_of!(DenyEvent, verdict);
        audited[off..off + 2].copy_from_slice(&nono_common::EVENT_WOULD_DENY.to_ne_bytes());
        m.denial(&audited);
        m.request("create", true, Duration::from_millis(3));
        m.ring_dropped(5);
        m.ring_dropped(7);
        let t = m.render();
        assert!(
            t.contains("# TYPE nono_sandboxes_started_total counter\n"),
            "{t}"
        );
        assert!(t.contains("# HELP nono_sandboxes_started_total "), "{t}");
        assert!(t.contains("\nnono_sandboxes_started_total 1\n"), "{t}");
        assert!(
            t.contains("nono_denials_total{hook=\"connect4\",reason=\"not-allowed\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("nono_events_dropped_total{stage=\"ring\"} 7\n"),
            "{t}"
        );
        assert!(t.contains("nono_build_info{version=\""), "{t}");
        assert!(t.contains("build_id=\"abc\"} 1\n"), "{t}");
        assert!(
            t.contains("# TYPE nono_daemon_request_seconds histogram\n"),
            "{t}"
        );
        assert!(
            t.contains("nono_daemon_request_seconds_count{type=\"create\"} 1\n"),
            "{t}"
        );
        assert!(!t.contains("# EOF"), "{t}");
        assert!(t.contains("# TYPE nono_sandboxes_active gauge\n"), "{t}");
    }

    #[test]
    fn only_loopback_listen() {
        assert!(check_listen("127.0.0.1:9100".parse().unwrap()).is_ok());
        assert!(check_listen("[::1]:9100".parse().unwrap()).is_ok());
        let e = check_listen("0.0.0.0:9100".parse().unwrap()).unwrap_err();
        assert!(e.to_string().contains("only a loopback"), "{e}");
        assert!(check_listen("192.0.2.1:9100".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn responder_limits_and_routes() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let render: Render = Arc::new(|| "x 1\n".to_string());
        let slots = Arc::new(Semaphore::new(2));
        let exchange = |req: Vec<u8>| {
            let render = render.clone();
            let slots = slots.clone();
            async move {
                let (mut a, b) = tokio::io::duplex(64 * 1024);
                spawn_exchange(b, render, slots);
                a.write_all(&req).await.unwrap();
                let mut out = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(8), a.read_to_end(&mut out)).await;
                String::from_utf8_lossy(&out).into_owned()
            }
        };
        let ok = exchange(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.ends_with("x 1\n"), "{ok}");
        let nf = exchange(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let post =
            exchange(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_vec())
                .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        // A head beyond the limit is refused, not buffered.
        let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 64 * 1024 - 100));
        let big = exchange(big).await;
        assert!(!big.contains(" 200 "), "{big}");
    }

    #[tokio::test]
    async fn responder_times_out_a_slow_head() {
        use tokio::io::AsyncReadExt as _;
        use tokio::io::AsyncWriteExt as _;
        let render: Render = Arc::new(String::new);
        let (mut a, b) = tokio::io::duplex(1024);
        spawn_exchange(b, render, Arc::new(Semaphore::new(1)));
        a.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let t = std::time::Instant::now();
        let mut out = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(15), a.read_to_end(&mut out)).await;
        assert!(r.is_ok(), "a slow head kept the connection open");
        assert!(t.elapsed() < Duration::from_secs(12));
        assert!(!String::from_utf8_lossy(&out).contains(" 200 "));
    }
}
