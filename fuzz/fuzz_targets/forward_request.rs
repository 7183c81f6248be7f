//! `check_forward_request` (absolute-form request target + headers),
//! `authorized` and `strip_hop_by_hop`.
//!
//! Input: first line = request target, each further line `name: value`.
//! When a request is accepted, checks what the proxy relies on afterwards:
//! scheme http, no userinfo, port not 0, exactly one Host naming the same
//! target, no conflicting framing headers, and a host that `Target::parse`
//! accepts and the rules can judge.
#![no_main]

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Uri;
use libfuzzer_sys::fuzz_target;
use nono_proxy::policy::Target;
use nono_proxy::request::{authorized, check_forward_request, strip_hop_by_hop};

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let Some(target) = lines.next() else {
        return;
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }

    let _ = authorized(&headers, Some("0123456789abcdef0123456789abcdef"));
    assert!(authorized(&headers, None));

    if let Ok((host, port)) = check_forward_request(&uri, &headers) {
        assert_eq!(uri.scheme_str(), Some("http"));
        assert_ne!(port, 0);
        let authority = uri.authority().expect("accepted without authority");
        assert!(!authority.as_str().contains('@'));
        assert_eq!(headers.get_all(hyper::header::HOST).iter().count(), 1);
        assert!(
            !(headers.contains_key(hyper::header::TRANSFER_ENCODING)
                && headers.contains_key(hyper::header::CONTENT_LENGTH))
        );
        assert!(
            headers
                .get_all(hyper::header::CONTENT_LENGTH)
                .iter()
                .count()
                <= 1
        );
        let t = Target::parse(&host).expect("accepted host must parse as a target");
        let host_header = headers[hyper::header::HOST].to_str().unwrap();
        // The Host header names the same target (after normalisation).
        let hh = host_header
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()) && !host_header.ends_with(']'))
            .map_or(host_header, |(h, _)| h);
        assert_eq!(Target::parse(hh).ok(), Some(t), "{host_header:?} vs {uri}");
    }

    let mut h = headers.clone();
    strip_hop_by_hop(&mut h);
    for name in [
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(!h.contains_key(name), "{name} survived strip_hop_by_hop");
    }
});
