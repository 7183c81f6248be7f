//! A TLS test host for the credential tests: HTTPS (HTTP/1.1 and HTTP/2 by
//! ALPN) on port 443 of the fixture's server namespace (198.51.100.2),
//! with a certificate from a throwaway CA made here with rcgen, recording
//! every request's version, authority, path and headers: the receiving side
//! the tests judge by.
//!
//! `/sse` answers a server-sent-events stream: `data: 1`, then nothing until
//! the test calls [`TlsHost::release`], then `data: 2` and the end; a proxy
//! that buffered the body would hold `data: 1` back until the end.
//! `/close` answers 200 and closes the connection (HTTP/1.1). Any other
//! path answers 200 with `ok`.
//!
//! The server runs on a runtime the host owns; dropping the host stops it.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

use crate::netns::{in_netns, NetFixture};

/// One request as the host received it.
#[derive(Debug, Clone)]
pub struct Record {
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// The URI's authority (HTTP/2 `:authority`), if any.
    pub authority: Option<String>,
    /// The `Host` header, if any.
    pub host: Option<String>,
    /// Path and query.
    pub path: String,
    /// Every header, name lower case.
    pub headers: Vec<(String, String)>,
    /// The body's length as received.
    pub body_len: usize,
}

impl Record {
    /// The values of header `name`.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The running host.
pub struct TlsHost {
    /// The test CA's certificate (PEM), for `--upstream-ca` and clients.
    pub ca_pem: PathBuf,
    /// The host's own certificate (PEM), e.g. to compute a pin.
    pub leaf_pem: PathBuf,
    records: Arc<Mutex<Vec<Record>>>,
    release: Arc<Notify>,
    rt: Option<tokio::runtime::Runtime>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl TlsHost {
    /// Starts the host for `names` on 0.0.0.0:443 in `fx`'s server
    /// namespace; the CA certificate is written to `dir/test-ca.pem`.
    pub fn start(fx: &NetFixture, dir: &Path, names: &[&str]) -> TlsHost {
        Self::start_with(fx, dir, names, true)
    }

    /// As [`TlsHost::start`]; without `h2` the host offers HTTP/1.1 only.
    pub fn start_with(fx: &NetFixture, dir: &Path, names: &[&str], h2: bool) -> TlsHost {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nono-tests credential test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = params.self_signed(&ca_key).expect("CA cert");
        let issuer = rcgen::Issuer::new(params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf_params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        let ca_pem = dir.join("test-ca.pem");
        std::fs::write(&ca_pem, ca_cert.pem()).expect("write test CA");
        let leaf_pem = dir.join("test-host.pem");
        std::fs::write(&leaf_pem, leaf.pem()).expect("write test host cert");

        #[allow(deprecated)] // ring: see nono-proxy::mitm::provider
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("server config");
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = in_netns(&fx.server, || {
            std::net::TcpListener::bind("0.0.0.0:443").expect("bind 443 in the server netns")
        });
        listener.set_nonblocking(true).expect("nonblocking");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let records = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (rec, rel) = (records.clone(), release.clone());
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // As real servers do: no Nagle delay on handshake flights.
                let _ = tcp.set_nodelay(true);
                let (acceptor, rec, rel) = (acceptor.clone(), rec.clone(), rel.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| handle(req, rec.clone(), rel.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsHost {
            ca_pem,
            leaf_pem,
            records,
            release,
            rt: Some(rt),
        }
    }

    /// Every request received so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("records").clone()
    }

    /// Lets a held `/sse` stream send its second event.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

impl Drop for TlsHost {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    records: Arc<Mutex<Vec<Record>>>,
    release: Arc<Notify>,
) -> Result<Response<Body>, Infallible> {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let rec = Record {
        version: format!("{:?}", req.version()),
        authority: req.uri().authority().map(|a| a.to_string()),
        host: req
            .headers()
            .get("host")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        body_len: 0,
    };
    // As a CORS-permissive API does (browsers may call it): the request's
    // `Origin` is reflected in `Access-Control-Allow-Origin`.
    let origin = req.headers().get("origin").cloned();
    let mut rec = rec;
    let sse = rec.path == "/sse";
    let path_is_close = rec.path == "/close";
    rec.body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    records.lock().expect("records").push(rec);
    if path_is_close {
        // HTTP/1.1: answer, then close the connection (as servers close
        // idle keep-alive connections).
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")).boxed());
        r.headers_mut().insert(
            "connection",
            hyper::header::HeaderValue::from_static("close"),
        );
        return Ok(r);
    }
    if !sse {
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")).boxed());
        if let Some(o) = origin {
            r.headers_mut().insert("access-control-allow-origin", o);
        }
        return Ok(r);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(b"data: 1\n\n")).await;
        release.notified().await;
        let _ = tx.send(Bytes::from_static(b"data: 2\n\n")).await;
    });
    let mut resp = Response::new(ChannelBody(rx).boxed());
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    Ok(resp)
}

/// A body that yields what a channel receives, as it arrives.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
