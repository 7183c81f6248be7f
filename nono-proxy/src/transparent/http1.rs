//! Plain HTTP on a redirected connection is judged by its first request's
//! `Host`; a second request on the same connection (keep-alive or
//! pipelined) could name another host that the same server answers for (a
//! CDN, shared virtual hosting), unchecked. So the first request is sent
//! on with `Connection: close`: the server closes after answering it
//! (RFC 9112 9.6: it must), and the client opens a new connection, judged
//! anew, for its next request.

/// Hop-by-hop headers about keeping the connection, dropped from the
/// first request before `Connection: close` is added.
const CONNECTION_HEADERS: [&str; 3] = ["connection", "keep-alive", "proxy-connection"];

/// `head` (the bytes read so far, starting with a complete HTTP/1 request
/// head) with that head's connection headers replaced by
/// `Connection: close`; everything after the head (a body, pipelined
/// requests) is kept as it was. `None` when `head` does not start with a
/// complete request head.
pub fn close_after_first(head: &[u8]) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let end = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    // The head's lines, its final empty line excluded.
    let text = &head[..end];
    let body = text.strip_suffix(b"\r\n\r\n")?;
    let mut out = Vec::with_capacity(head.len() + 19);
    let mut dropping = false;
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if i > 0 {
            // A continuation line belongs to the header before it.
            let continued = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
            if !continued {
                let name = line.split(|b| *b == b':').next().unwrap_or(&[]);
                dropping = CONNECTION_HEADERS
                    .iter()
                    .any(|h| name.trim_ascii().eq_ignore_ascii_case(h.as_bytes()));
            }
            if dropping {
                continue;
            }
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&head[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_request_asks_the_server_to_close() {
        let h = b"GET /a HTTP/1.1\r\nHost: allowed.test\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nAccept: */*\r\n\r\nGET /b HTTP/1.1\r\nHost: evil.test\r\n\r\n";
        let out = close_after_first(h).unwrap();
        assert_eq!(
            out,
            b"GET /a HTTP/1.1\r\nHost: allowed.test\r\nAccept: */*\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: evil.test\r\n\r\n"
        );
    }

    #[test]
    fn a_body_stays_and_unparseable_heads_are_left_alone() {
        let h = b"POST /a HTTP/1.1\r\nHost: a.test\r\nCONNECTION: upgrade\r\nContent-Length: 2\r\n\r\nhi";
        let out = close_after_first(h).unwrap();
        assert_eq!(
            out,
            b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
        // Incomplete, not HTTP, or obsolete line folding (which the peek
        // does not take for HTTP either): nothing to rewrite.
        assert_eq!(close_after_first(b"GET / HTTP/1.1\r\nHost: a"), None);
        assert_eq!(close_after_first(b"\x16\x03\x01"), None);
        assert_eq!(
            close_after_first(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x,\r\n close\r\n\r\n"),
            None
        );
    }
}
