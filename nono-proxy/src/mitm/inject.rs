//! The decisions made on each intercepted request, apart from the I/O:
//! whether it is addressed to the host whose credential it would get, and
//! the header rewrite.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Uri;

use super::credential::Credential;

/// A request addressed to another host than the intercepted one (it would
/// otherwise carry the credential wherever the upstream routes `Host`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misdirected {
    /// Neither `Host` nor `:authority`.
    #[error("request names no host (no Host header or :authority)")]
    NoHost,
    /// `Host` or `:authority` names another host or port.
    #[error("request is addressed to {0:?}, not the intercepted host")]
    Other(String),
    /// More than one `Host` header.
    #[error("request has more than one Host header")]
    ManyHosts,
}

/// Whether `authority` (`host[:port]`) names `host` on `port` (no port:
/// 443, the https default).
fn names(authority: &str, host: &str, port: u16) -> bool {
    let (h, p) = match authority.rsplit_once(':') {
        Some((h, p)) => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) => return false,
        },
        None => (authority, 443),
    };
    let h = h.strip_suffix('.').unwrap_or(h);
    p == port && h.eq_ignore_ascii_case(host)
}

/// Checks that every host the request names (the URI's authority, as
/// HTTP/2 `:authority` or an absolute-form target, and each `Host`
/// header) is the intercepted `host:port`, and that it names one.
pub fn check_authority(
    uri: &Uri,
    headers: &HeaderMap,
    host: &str,
    port: u16,
) -> Result<(), Misdirected> {
    let hosts: Vec<&HeaderValue> = headers.get_all(hyper::header::HOST).iter().collect();
    if hosts.len() > 1 {
        return Err(Misdirected::ManyHosts);
    }
    let mut named = false;
    if let Some(a) = uri.authority() {
        named = true;
        if a.as_str().contains('@') || !names(a.as_str(), host, port) {
            return Err(Misdirected::Other(a.as_str().to_string()));
        }
    }
    if let Some(h) = hosts.first() {
        named = true;
        let text = h
            .to_str()
            .map_err(|_| Misdirected::Other("<not ASCII>".into()))?;
        if !names(text, host, port) {
            return Err(Misdirected::Other(text.to_string()));
        }
    }
    if named {
        Ok(())
    } else {
        Err(Misdirected::NoHost)
    }
}

/// Hop-by-hop headers: about one connection, never forwarded (RFC 9110
/// 7.6.1), and refused by HTTP/2 if they were.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers and those the `Connection` header names.
/// `TE: trailers` is kept: HTTP/2 allows it, and gRPC needs it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let te_trailers = headers
        .get(hyper::header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
    if te_trailers {
        headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Puts the credentials of the intercepted host in: each credential's own
/// header is replaced by the real value (whatever the sandbox sent there),
/// and nowhere else. The placeholder is NOT filled into other headers: a
/// host that reflects a request header (CORS `Access-Control-Allow-Origin`
/// echoing `Origin`, an error quoting `Referer`) would hand the real value
/// to the sandbox (found by the adversarial review). Only `creds` (this
/// host's) are used. Returns how many headers were rewritten.
pub fn inject(headers: &mut HeaderMap, creds: &[Credential]) -> usize {
    let mut n = 0;
    for c in creds {
        headers.remove(&c.spec.header);
        headers.insert(c.spec.header.clone(), c.header_value().clone());
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mitm::credential::{CredentialSpec, Secret};

    fn cred(spec: &str, value: &str, placeholder: &str) -> Credential {
        let s: CredentialSpec = spec.parse().unwrap();
        Credential::new(s, Secret::new(value), placeholder.into()).unwrap()
    }

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn authority_must_be_the_intercepted_host() {
        let origin: Uri = "/v1/messages".parse().unwrap();
        let h2: Uri = "https://api.test/v1".parse().unwrap();
        let ok = |uri: &Uri, list: &[(&str, &str)]| {
            check_authority(uri, &headers(list), "api.test", 443)
        };
        assert_eq!(ok(&origin, &[("host", "api.test")]), Ok(()));
        assert_eq!(ok(&origin, &[("host", "API.Test:443")]), Ok(()));
        assert_eq!(ok(&origin, &[("host", "api.test.")]), Ok(()));
        assert_eq!(ok(&h2, &[]), Ok(()));
        assert_eq!(ok(&origin, &[]), Err(Misdirected::NoHost));
        assert!(ok(&origin, &[("host", "evil.test")]).is_err());
        assert!(ok(&origin, &[("host", "api.test:8443")]).is_err());
        assert!(ok(&origin, &[("host", "api.test.evil.test")]).is_err());
        assert!(ok(&h2, &[("host", "evil.test")]).is_err());
        let other: Uri = "https://evil.test/v1".parse().unwrap();
        assert!(ok(&other, &[("host", "api.test")]).is_err());
        let userinfo: Uri = "https://api.test@evil.test/".parse().unwrap();
        assert!(ok(&userinfo, &[]).is_err());
        assert_eq!(
            ok(&origin, &[("host", "api.test"), ("host", "api.test")]),
            Err(Misdirected::ManyHosts)
        );
        assert_eq!(
            check_authority(
                &origin,
                &headers(&[("host", "api.test:8443")]),
                "api.test",
                8443
            ),
            Ok(())
        );
    }

    #[test]
    fn only_the_credentials_own_header_gets_the_value() {
        let key = cred("api.test:x-api-key=env:K", "sk-real", "nono-placeholder-aa");
        let bearer = cred(
            "api.test:authorization=env:T;format=Bearer {}",
            "tok-real",
            "nono-placeholder-bb",
        );
        let mut h = headers(&[
            ("x-api-key", "nono-placeholder-aa"),
            ("x-api-key", "second"),
            ("x-other", "k=nono-placeholder-aa;t=nono-placeholder-bb"),
            ("x-foreign", "nono-placeholder-cc"),
        ]);
        inject(&mut h, &[key, bearer]);
        assert_eq!(h.get_all("x-api-key").iter().count(), 1);
        assert_eq!(h["x-api-key"], "sk-real");
        assert_eq!(h["authorization"], "Bearer tok-real");
        // Elsewhere the placeholder stays a placeholder (a host could
        // reflect that header back to the sandbox).
        assert_eq!(h["x-other"], "k=nono-placeholder-aa;t=nono-placeholder-bb");
        assert_eq!(h["x-foreign"], "nono-placeholder-cc");
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = headers(&[
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
        let mut h = headers(&[("te", "trailers"), ("x", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["te"], "trailers");
        let mut h = headers(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    /// Review (r-review2), FINDING 2: the placeholder is filled in in
    /// *every* request header, so any header the credential host reflects
    /// in its answer becomes an oracle for the real value. The commonest
    /// reflector is CORS: a host that allows browser access answers
    /// `Access-Control-Allow-Origin: <the request's Origin>`; others echo
    /// `Referer`, a request id, a bad `User-Agent` or an unknown version
    /// header in an error body. The child sends `Origin: https://PLACEHOLDER`
    /// and reads the key from the response header. Only the credential's
    /// own header (and, if wanted, a fixed list the user names) should be
    /// rewritten.
    #[test]
    fn the_placeholder_is_not_filled_into_headers_a_host_reflects() {
        let key = cred("api.test:x-api-key=env:K", "sk-real", "nono-placeholder-aa");
        let mut h = headers(&[
            ("x-api-key", "nono-placeholder-aa"),
            ("origin", "https://nono-placeholder-aa"),
            ("referer", "https://x.test/nono-placeholder-aa"),
            ("x-request-id", "nono-placeholder-aa"),
        ]);
        inject(&mut h, &[key]);
        assert_eq!(h["x-api-key"], "sk-real");
        for name in ["origin", "referer", "x-request-id"] {
            assert!(
                !h[name].to_str().unwrap().contains("sk-real"),
                "the real key was put into {name}: {:?} (reflected by the host, it reaches the sandbox)",
                h[name]
            );
        }
    }
}
