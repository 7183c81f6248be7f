//! Checks on the request itself, before any rule is consulted: the proxy
//! credentials, the absolute-form target and its `Host` header, framing
//! headers; and the hop-by-hop headers that are never forwarded. Pure
//! functions of the request, so they can be fuzzed on their own.

use base64::Engine as _;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::Uri;

use crate::policy::Target;

/// Why an absolute-form request cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A CONNECT whose target is not `host:port` (a port other than 0).
    #[error("CONNECT needs host:port")]
    ConnectTarget,
    /// `https://` must go through CONNECT.
    #[error("https:// URLs must be requested with CONNECT (HTTPS_PROXY)")]
    Https,
    /// Another scheme.
    #[error("scheme {0}:// is not supported")]
    Scheme(String),
    /// An origin-form target (`/path`): the client does not know it talks to
    /// a proxy.
    #[error("this is a proxy: requests must use an absolute URL (http://host/path)")]
    NotAbsolute,
    /// No authority in the URL.
    #[error("request URL has no host")]
    NoHost,
    /// `user:password@` in the URL.
    #[error("credentials in the request URL are not forwarded")]
    Credentials,
    /// `:0`.
    #[error("port 0")]
    PortZero,
    /// No `Host`, or several.
    #[error("exactly one Host header is required")]
    HostCount,
    /// `Host` is not visible ASCII.
    #[error("Host header is not text")]
    HostNotText,
    /// `Host` is not `host[:port]`.
    #[error("Host header is malformed")]
    HostMalformed,
    /// `Host` names another target than the URL.
    #[error("Host header {host:?} does not match the request URL's {authority}")]
    HostMismatch {
        /// The header's value.
        host: String,
        /// The URL's authority.
        authority: String,
    },
    /// Both `Transfer-Encoding` and `Content-Length`.
    #[error("both Transfer-Encoding and Content-Length are present")]
    ConflictingFraming,
    /// Several `Content-Length` headers.
    #[error("more than one Content-Length header")]
    ContentLengths,
}

/// Checks `Proxy-Authorization: Basic base64(nono:SECRET)`.
pub fn authorized(headers: &HeaderMap, secret: Option<&str>) -> bool {
    let Some(secret) = secret else {
        return true;
    };
    let Some(v) = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(b64) = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    let expected = format!("nono:{secret}");
    constant_time_eq(&raw, expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus proxy credentials: never
/// forwarded in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Why an absolute-form request cannot be forwarded, if it cannot.
pub fn check_forward_request(
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(String, u16), RequestError> {
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(RequestError::Https),
        Some(other) => return Err(RequestError::Scheme(other.to_string())),
        None => return Err(RequestError::NotAbsolute),
    }
    let authority = uri.authority().ok_or(RequestError::NoHost)?;
    if authority.as_str().contains('@') {
        return Err(RequestError::Credentials);
    }
    let host = authority.host().to_string();
    let port = authority.port_u16().unwrap_or(80);
    if port == 0 {
        return Err(RequestError::PortZero);
    }
    // Host must name the same authority as the URL: a mismatch is how
    // requests are smuggled past name-based rules.
    let hosts: Vec<_> = headers.get_all(header::HOST).iter().collect();
    if hosts.len() != 1 {
        return Err(RequestError::HostCount);
    }
    let h = hosts[0].to_str().map_err(|_| RequestError::HostNotText)?;
    let (hh, hp) = split_host_port(h).ok_or(RequestError::HostMalformed)?;
    let same_host =
        Target::parse(&hh).ok() == Target::parse(&host).ok() && Target::parse(&hh).is_ok();
    if !same_host || hp.unwrap_or(80) != port {
        return Err(RequestError::HostMismatch {
            host: h.to_string(),
            authority: authority.to_string(),
        });
    }
    // Conflicting framing: refuse rather than pick one (request smuggling).
    // hyper already normalises what reaches us (RFC 9112 §6.1: with both,
    // Transfer-Encoding wins, Content-Length is dropped and the connection
    // closes after the response; identical duplicate lengths are merged,
    // differing ones refused), and every request is re-serialised, so this
    // is a second line should hyper's behaviour ever change.
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(RequestError::ConflictingFraming);
    }
    if headers.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(RequestError::ContentLengths);
    }
    Ok((host, port))
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if tail.is_empty() => None,
            None => return None,
        };
        return Some((format!("[{h}]"), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), Some(p.parse().ok()?))),
        None => Some((s.to_string(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn forward_request_checks() {
        let u: Uri = "http://allowed.test/x".parse().unwrap();
        assert_eq!(
            check_forward_request(&u, &headers(&[("host", "allowed.test")])).unwrap(),
            ("allowed.test".into(), 80)
        );
        assert!(check_forward_request(&u, &headers(&[("host", "ALLOWED.test.")])).is_ok());
        assert!(check_forward_request(&u, &headers(&[("host", "allowed.test:80")])).is_ok());
        assert!(check_forward_request(&u, &headers(&[("host", "evil.test")])).is_err());
        assert!(check_forward_request(&u, &headers(&[("host", "allowed.test:8080")])).is_err());
        assert!(check_forward_request(&u, &headers(&[])).is_err());
        assert!(check_forward_request(
            &u,
            &headers(&[("host", "allowed.test"), ("host", "allowed.test")])
        )
        .is_err());
        assert!(check_forward_request(
            &u,
            &headers(&[
                ("host", "allowed.test"),
                ("content-length", "5"),
                ("transfer-encoding", "chunked")
            ])
        )
        .is_err());
        let https: Uri = "https://allowed.test/".parse().unwrap();
        assert!(check_forward_request(&https, &headers(&[("host", "allowed.test")])).is_err());
        let origin: Uri = "/x".parse().unwrap();
        assert!(check_forward_request(&origin, &headers(&[("host", "allowed.test")])).is_err());
        let creds: Uri = "http://user:pw@allowed.test/".parse().unwrap();
        assert!(check_forward_request(&creds, &headers(&[("host", "allowed.test")])).is_err());
        let v6: Uri = "http://[2001:db8::2]:8080/".parse().unwrap();
        assert!(check_forward_request(&v6, &headers(&[("host", "[2001:db8::2]:8080")])).is_ok());
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic abc"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn proxy_credentials() {
        let good = base64::engine::general_purpose::STANDARD.encode("nono:s3cret");
        let bad = base64::engine::general_purpose::STANDARD.encode("nono:wrong");
        assert!(authorized(
            &headers(&[("proxy-authorization", &format!("Basic {good}"))]),
            Some("s3cret")
        ));
        assert!(!authorized(
            &headers(&[("proxy-authorization", &format!("Basic {bad}"))]),
            Some("s3cret")
        ));
        assert!(!authorized(&headers(&[]), Some("s3cret")));
        assert!(authorized(&headers(&[]), None));
    }
}
