//! Credential injection: for a CONNECT to a host that has a credential,
//! the proxy terminates TLS with a certificate from the sandbox's own CA,
//! re-originates TLS to the real host (verified against the system's trust
//! store and any `--upstream-ca`), and puts the real credential in each
//! request, so the sandbox only ever holds a placeholder. Every other host
//! keeps the end-to-end tunnel.
//!
//! - `credential`: the description, the value (never printed), parsing.
//! - `ca`: the per-sandbox CA and its leaf certificates.
//! - `inject`: the per-request decisions (authority check, header rewrite).
//! - `serve`: the TLS and HTTP plumbing.

pub mod ca;
pub mod credential;
pub mod inject;
pub(crate) mod serve;

pub use rustls::pki_types::CertificateDer;
use std::collections::BTreeMap;
use std::sync::Arc;

pub use credential::{Credential, CredentialError, CredentialSpec, Secret, Source, ValueError};

/// Why interception could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MitmError {
    /// The CA or a leaf could not be made.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// rustls refused a configuration (a certificate, a key).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// No trust anchor at all to verify the real hosts with.
    #[error("no trusted root certificates: the system's store is empty or unreadable ({0}) and no --upstream-ca was given")]
    NoRoots(String),
}

/// One intercepted host:port: its credentials and TLS server sides.
pub(crate) struct Entry {
    /// The host name (normalised).
    pub host: String,
    /// The CONNECT port.
    pub port: u16,
    /// Every credential for this host:port.
    pub creds: Vec<Credential>,
    /// Server side offering h2 and http/1.1 (upstream speaks h2).
    pub server_h2: Arc<rustls::ServerConfig>,
    /// Server side offering http/1.1 only (upstream speaks HTTP/1.1).
    pub server_h1: Arc<rustls::ServerConfig>,
}

/// What the proxy needs to intercept: built once at start.
pub struct Interceptor {
    entries: BTreeMap<(String, u16), Arc<Entry>>,
    /// Client side towards the real hosts (ALPN h2, http/1.1).
    pub(crate) client: Arc<rustls::ClientConfig>,
    ca_pem: String,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field("hosts", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// ring rather than aws-lc-rs: aws-lc-rs needs cmake and a C toolchain
/// for the static musl release build; ring builds with cargo alone.
/// rustls deprecates ring's provider for lacking post-quantum key
/// exchange, which this proxy does not need to offer.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's trust store (rustls-native-certs: the same store the
/// sandbox's tools use, enterprise roots included) plus `extra`.
pub fn trust_roots(
    extra: &[CertificateDer<'static>],
) -> (Vec<CertificateDer<'static>>, Vec<String>) {
    let found = rustls_native_certs::load_native_certs();
    let errors = found.errors.iter().map(|e| e.to_string()).collect();
    let mut all = found.certs;
    all.extend(extra.iter().cloned());
    (all, errors)
}

impl Interceptor {
    /// Mints the sandbox's CA and leaves for `creds` and builds the TLS
    /// configurations; `upstream_ca` is trusted besides the system roots.
    pub fn new(
        sandbox: &str,
        creds: &[Credential],
        upstream_ca: &[CertificateDer<'static>],
    ) -> Result<Self, MitmError> {
        let mut by_target: BTreeMap<(String, u16), Vec<Credential>> = BTreeMap::new();
        for c in creds {
            by_target
                .entry((c.spec.host.clone(), c.spec.port))
                .or_default()
                .push(c.clone());
        }
        let mut hosts: Vec<String> = by_target.keys().map(|(h, _)| h.clone()).collect();
        hosts.dedup();
        let minted = ca::mint(sandbox, &hosts)?;
        let mut entries = BTreeMap::new();
        for ((host, port), creds) in by_target {
            let Some(leaf) = minted.leaves.get(&host) else {
                continue;
            };
            let server = |alpn: &[&[u8]]| -> Result<Arc<rustls::ServerConfig>, MitmError> {
                let mut c = rustls::ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()?
                    .with_no_client_auth()
                    .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())?;
                c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
                Ok(Arc::new(c))
            };
            entries.insert(
                (host.clone(), port),
                Arc::new(Entry {
                    host,
                    port,
                    creds,
                    server_h2: server(&[b"h2", b"http/1.1"])?,
                    server_h1: server(&[b"http/1.1"])?,
                }),
            );
        }
        let (roots, errors) = trust_roots(upstream_ca);
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(roots);
        if store.is_empty() {
            return Err(MitmError::NoRoots(errors.join("; ")));
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            entries,
            client: Arc::new(client),
            ca_pem: minted.ca_pem,
        })
    }

    /// The intercepted entry for a CONNECT target, if it has credentials.
    pub(crate) fn lookup(&self, host: &str, port: u16) -> Option<Arc<Entry>> {
        let h = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        self.entries.get(&(h, port)).cloned()
    }

    /// The sandbox CA's certificate (PEM), for the sandbox's trust bundle.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// Reads PEM certificates (an `--upstream-ca` file); an error names what is
/// wrong, and a file with no certificate is one.
pub fn read_pem_certs(
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    use rustls::pki_types::pem::PemObject as _;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if certs.is_empty() {
        return Err(std::io::Error::other("no PEM certificate in it"));
    }
    Ok(certs)
}

/// Certificates as one PEM text (the sandbox's bundle).
pub fn to_pem(certs: &[CertificateDer<'_>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for c in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}
