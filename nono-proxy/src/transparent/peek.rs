//! What the first bytes of a redirected connection say about where the
//! client meant to go: the server name of a TLS ClientHello (and whether
//! the hello is encrypted, ECH), or the `Host` of a plain HTTP request.
//! Pure functions over the bytes peeked so far.

use tls_parser::{
    parse_tls_extensions, parse_tls_plaintext, TlsExtension, TlsExtensionType, TlsMessage,
    TlsMessageHandshake, TlsRecordType,
};

/// Bytes worth waiting for: one full TLS record (16 KiB + header), or an
/// HTTP request head of this size. A client that needs more to say where
/// it goes gets no name.
pub const MAX_PEEK: usize = 16 * 1024 + 5;

/// The TLS extension type of an Encrypted ClientHello
/// (draft-ietf-tls-esni, `encrypted_client_hello`).
const ECH: u16 = 0xfe0d;

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// A TLS ClientHello: its server name (as sent, not yet normalised),
    /// and whether it carries an Encrypted ClientHello (then the real name
    /// is hidden and the outer one cannot be trusted).
    Tls {
        /// The `host_name` entry of the server_name extension.
        sni: Option<String>,
        /// An `encrypted_client_hello` extension is present.
        ech: bool,
    },
    /// A plain HTTP/1 request: its `Host` header (as sent).
    Http {
        /// The Host header, when there is exactly one.
        host: Option<String>,
    },
    /// Neither (another protocol, or bytes that do not parse as HTTP).
    Other,
    /// A TLS handshake record that is not one whole, plain ClientHello
    /// (split over records, malformed, two server names): the name it
    /// carries cannot be trusted, and passing it on unchecked is how a
    /// name check would be evaded (a split hello naming a denied host, sent
    /// to an allowed name's address). Refused.
    Unreadable,
}

/// Looks at the first bytes of a connection.
pub fn peek(buf: &[u8]) -> Peeked {
    match buf.first() {
        None => Peeked::NeedMore,
        // A TLS handshake record.
        Some(&0x16) => client_hello(buf),
        Some(b) if b.is_ascii_uppercase() => http_host(buf),
        Some(_) => Peeked::Other,
    }
}

fn client_hello(buf: &[u8]) -> Peeked {
    let record = match parse_tls_plaintext(buf) {
        Ok((_, r)) => r,
        Err(tls_parser::Err::Incomplete(_)) if buf.len() < MAX_PEEK => return Peeked::NeedMore,
        Err(_) => return Peeked::Unreadable,
    };
    if record.hdr.record_type != TlsRecordType::Handshake {
        return Peeked::Unreadable;
    }
    // A ClientHello split over several records is refused a name: nothing
    // legitimate needs that, and it is how an evasion would start.
    let Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello))) = record.msg.first()
    else {
        return Peeked::Unreadable;
    };
    let Some(ext) = hello.ext else {
        return Peeked::Tls {
            sni: None,
            ech: false,
        };
    };
    let Ok((_, exts)) = parse_tls_extensions(ext) else {
        return Peeked::Unreadable;
    };
    let mut sni = None;
    let mut names = 0;
    let mut ech = false;
    for e in &exts {
        match e {
            TlsExtension::SNI(list) => {
                for (kind, name) in list {
                    // host_name (0) is the only type defined.
                    if kind.0 == 0 {
                        names += 1;
                        sni = std::str::from_utf8(name).ok().map(str::to_string);
                    }
                }
            }
            TlsExtension::Unknown(TlsExtensionType(ECH), _) => ech = true,
            _ => {}
        }
    }
    // RFC 6066: at most one name of a type; two is a hello to distrust.
    if names > 1 {
        return Peeked::Unreadable;
    }
    Peeked::Tls { sni, ech }
}

fn http_host(buf: &[u8]) -> Peeked {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() < MAX_PEEK => return Peeked::NeedMore,
        _ => return Peeked::Other,
    }
    let mut hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => std::str::from_utf8(h.value)
            .ok()
            .map(|v| v.trim().to_string()),
        // None, or two Host headers (RFC 9112 §3.2: a 400).
        _ => None,
    };
    Peeked::Http { host }
}

#[cfg(test)]
#[path = "peek_tests.rs"]
mod tests;
