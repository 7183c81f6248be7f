//! `cargo xtask bench-creds`: requests per second and per-request latency
//! through the proxy for a credential host (TLS terminated, credential put
//! in, TLS re-originated) vs a plain CONNECT tunnel to the same origin, in
//! one run, rounds interleaved.
//!
//! Rig (removed at exit; no packet leaves the machine): the tests' client
//! and server namespaces (`NetFixture`), the tests' TLS host on
//! 198.51.100.2:443 (HTTP/2 and HTTP/1.1, a CA made for the run), and the
//! proxy library started in-process in the client namespace with one
//! credential. Clients: `--connections` keep-alive HTTP/1.1-over-TLS
//! connections through CONNECT, `--requests` sequential GETs each. The
//! first request of a connection (its handshakes) is reported apart;
//! latency percentiles are over the others. Figures are printed, never
//! asserted.

use anyhow::{bail, Context as _, Result};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use nono_proxy::mitm::{Credential, CredentialSpec, Secret};
use nono_tests::netns::{enter, NetFixture};
use nono_tests::tlshost::TlsHost;

const CRED_HOST: &str = "api.cred.test";
const PLAIN_HOST: &str = "plain.test";
const PLACEHOLDER: &str = "nono-placeholder-00000000000000000000000000000000";

#[derive(Clone, Copy)]
struct Opts {
    requests: usize,
    connections: usize,
    rounds: usize,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        requests: 2000,
        connections: 4,
        rounds: 3,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> Result<usize> {
            let v = it.next().with_context(|| format!("{what} needs a value"))?;
            let n: usize = v.parse().with_context(|| format!("{what} {v:?}"))?;
            if n == 0 {
                bail!("{what} must be at least 1");
            }
            Ok(n)
        };
        match a.as_str() {
            "--requests" => o.requests = num("--requests")?,
            "--connections" => o.connections = num("--connections")?,
            "--rounds" => o.rounds = num("--rounds")?,
            _ => bail!(
                "usage: cargo xtask bench-creds [--requests N (per connection, 2000)] \
                 [--connections N (4)] [--rounds N (3)]"
            ),
        }
    }
    Ok(o)
}

/// One round's figures.
struct Round {
    rps: f64,
    first: Duration,
    p50: Duration,
    p99: Duration,
}

pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-creds needs root (it creates network namespaces)");
    }
    let dir = std::env::temp_dir().join(format!("nono-bench-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let fx = NetFixture::new();
    let host = TlsHost::start(&fx, &dir, &[CRED_HOST, PLAIN_HOST]);
    let test_ca = std::fs::read(&host.ca_pem)?;
    let client_ns = fx.client.clone();
    let opts = o;
    let result = std::thread::spawn(move || -> Result<Vec<(&'static str, Round)>> {
        enter(&client_ns).map_err(anyhow::Error::msg)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(bench(&opts, &test_ca))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the bench thread panicked"))?;
    drop(host);
    drop(fx);
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result?;
    println!(
        "\n{:<10} {:>10} {:>12} {:>10} {:>10}",
        "mode", "req/s", "first (ms)", "p50 (ms)", "p99 (ms)"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (mode, r) in &rows {
        println!(
            "{mode:<10} {:>10.0} {:>12.2} {:>10.3} {:>10.3}",
            r.rps,
            ms(r.first),
            ms(r.p50),
            ms(r.p99)
        );
    }
    let median = |mode: &str, f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = rows
            .iter()
            .filter(|(m, _)| *m == mode)
            .map(|(_, r)| f(r))
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (t_rps, i_rps) = (median("tunnel", |r| r.rps), median("intercept", |r| r.rps));
    let (t_p50, i_p50) = (
        median("tunnel", |r| r.p50.as_secs_f64() * 1000.0),
        median("intercept", |r| r.p50.as_secs_f64() * 1000.0),
    );
    println!(
        "\nmedians over {} rounds: intercept/tunnel req/s = {:.2}x; added p50 latency = {:.3} ms per request after the handshake",
        o.rounds,
        i_rps / t_rps.max(f64::MIN_POSITIVE),
        i_p50 - t_p50
    );
    Ok(())
}

async fn bench(o: &Opts, test_ca: &[u8]) -> Result<Vec<(&'static str, Round)>> {
    use rustls::pki_types::pem::PemObject as _;
    let test_ca: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(test_ca).collect::<Result<_, _>>()?;
    let spec: CredentialSpec = format!("{CRED_HOST}:x-api-key=env:BENCH_KEY").parse()?;
    let cred = Credential::new(spec, Secret::new("sk-bench-real-key"), PLACEHOLDER.into())?;
    let mut config = nono_proxy::ProxyConfig {
        credentials: vec![cred],
        upstream_ca: test_ca.clone(),
        sandbox: "bench".into(),
        pins: vec![
            format!("{CRED_HOST}=198.51.100.2").parse()?,
            format!("{PLAIN_HOST}=198.51.100.2").parse()?,
        ],
        // Nothing listens there: no name is sent to the machine's resolver.
        dns_server: Some("127.0.0.1:9".parse()?),
        ..Default::default()
    };
    config.policy.allow = vec![CRED_HOST.parse()?, PLAIN_HOST.parse()?];
    let events: Arc<dyn nono_proxy::EventSink> = Arc::new(Discard);
    let proxy = nono_proxy::start_loopback(config, events).await?;
    let addr = proxy.addrs[0];
    let ca_pem = proxy.ca_pem().context("no sandbox CA")?.to_string();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(test_ca);
    roots.add_parsable_certificates(
        CertificateDer::pem_slice_iter(ca_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?,
    );
    #[allow(deprecated)] // ring: see nono-proxy::mitm
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);
    // Warm-up (not reported).
    round(addr, PLAIN_HOST, &tls, 1, 50).await?;
    round(addr, CRED_HOST, &tls, 1, 50).await?;
    let mut rows = Vec::new();
    for _ in 0..o.rounds {
        for (mode, host) in [("tunnel", PLAIN_HOST), ("intercept", CRED_HOST)] {
            rows.push((
                mode,
                round(addr, host, &tls, o.connections, o.requests).await?,
            ));
        }
    }
    proxy.stop().await;
    Ok(rows)
}

struct Discard;

impl nono_proxy::EventSink for Discard {
    fn record(&self, _: nono_proxy::ProxyEvent) {}
}

async fn round(
    proxy: SocketAddr,
    host: &'static str,
    tls: &Arc<rustls::ClientConfig>,
    connections: usize,
    requests: usize,
) -> Result<Round> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            connection(proxy, host, tls, requests).await
        }));
    }
    let mut firsts = Vec::new();
    let mut rest = Vec::new();
    for t in tasks {
        let v = t.await??;
        if let Some((first, others)) = v.split_first() {
            firsts.push(*first);
            rest.extend_from_slice(others);
        }
    }
    let wall = started.elapsed();
    rest.sort();
    let pct = |p: f64| {
        rest.get(((rest.len() as f64 * p) as usize).min(rest.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Round {
        rps: (connections * requests) as f64 / wall.as_secs_f64(),
        first: firsts.iter().sum::<Duration>() / firsts.len().max(1) as u32,
        p50: pct(0.50),
        p99: pct(0.99),
    })
}

/// One connection: CONNECT, TLS, `requests` sequential GETs; each
/// request's latency (the first includes the handshakes).
async fn connection(
    proxy: SocketAddr,
    host: &'static str,
    tls: Arc<rustls::ClientConfig>,
    requests: usize,
) -> Result<Vec<Duration>> {
    let t0 = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(proxy).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut b).await? == 0 {
            bail!("proxy closed during CONNECT");
        }
        head.push(b[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("CONNECT {host}: {}", String::from_utf8_lossy(&head));
    }
    let name = ServerName::try_from(host)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut out = Vec::with_capacity(requests);
    let mut start = t0;
    for _ in 0..requests {
        let req = hyper::Request::get("/bench")
            .header("host", host)
            .header("x-api-key", PLACEHOLDER)
            .body(Empty::<Bytes>::new())?;
        send.ready().await?;
        let resp = send.send_request(req).await?;
        if !resp.status().is_success() {
            bail!("{host}: status {}", resp.status());
        }
        resp.into_body().collect().await?;
        out.push(start.elapsed());
        start = Instant::now();
    }
    Ok(out)
}
