use super::*;

/// A TLS 1.2-framed ClientHello with the given extensions, in one record.
fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut ext = Vec::new();
    for (t, body) in exts {
        ext.extend_from_slice(&t.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(body);
    }
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn sni(names: &[&str]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for n in names {
        list.push(0);
        list.extend_from_slice(&(n.len() as u16).to_be_bytes());
        list.extend_from_slice(n.as_bytes());
    }
    let mut body = (list.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(&list);
    (0, body)
}

#[test]
fn server_name_of_a_client_hello() {
    let h = hello(&[sni(&["api.example.com"]), (0x002b, vec![2, 3, 4])]);
    assert_eq!(
        peek(&h),
        Peeked::Tls {
            sni: Some("api.example.com".into()),
            ech: false
        }
    );
}

#[test]
fn partial_hellos_ask_for_more_and_oversized_ones_get_no_name() {
    let h = hello(&[sni(&["api.example.com"])]);
    for cut in [1, 5, 20, h.len() - 1] {
        assert_eq!(peek(&h[..cut]), Peeked::NeedMore, "cut at {cut}");
    }
    assert_eq!(peek(&[]), Peeked::NeedMore);
    // A record claiming more than a record may hold: unreadable.
    let mut big = vec![0x16, 0x03, 0x01, 0xff, 0xff];
    big.resize(MAX_PEEK, 0);
    assert_eq!(peek(&big), Peeked::Unreadable);
}

#[test]
fn encrypted_client_hello_is_flagged() {
    let h = hello(&[sni(&["public.example.net"]), (ECH, vec![0; 40])]);
    assert_eq!(
        peek(&h),
        Peeked::Tls {
            sni: Some("public.example.net".into()),
            ech: true
        }
    );
}

#[test]
fn no_name_and_two_names() {
    assert_eq!(
        peek(&hello(&[(0x002b, vec![2, 3, 4])])),
        Peeked::Tls {
            sni: None,
            ech: false
        }
    );
    // Two host names: distrusted.
    assert_eq!(
        peek(&hello(&[sni(&["a.example", "b.example"])])),
        Peeked::Unreadable
    );
}

#[test]
fn a_hello_after_another_record_or_not_a_hello() {
    // An alert record first.
    assert_eq!(
        peek(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]),
        Peeked::Other
    );
    // A handshake record holding a ServerHello-type message.
    let mut h = hello(&[sni(&["api.example.com"])]);
    h[5] = 0x02;
    assert_ne!(
        peek(&h),
        Peeked::Tls {
            sni: Some("api.example.com".into()),
            ech: false
        }
    );
}

#[test]
fn http_host() {
    let r = b"GET /x HTTP/1.1\r\nHost: api.example.com:8080\r\nAccept: */*\r\n\r\n";
    assert_eq!(
        peek(r),
        Peeked::Http {
            host: Some("api.example.com:8080".into())
        }
    );
    assert_eq!(peek(&r[..20]), Peeked::NeedMore);
    let two = b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n";
    assert_eq!(peek(two), Peeked::Http { host: None });
    let none = b"GET / HTTP/1.0\r\n\r\n";
    assert_eq!(peek(none), Peeked::Http { host: None });
    assert_eq!(peek(b"SSH-2.0-OpenSSH_9.2\r\n"), Peeked::Other);
    assert_eq!(peek(b"\x00\x01binary"), Peeked::Other);
    // A request head that never ends: no name once the cap is reached.
    let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
    long.resize(MAX_PEEK, b'a');
    assert_eq!(peek(&long), Peeked::Other);
}

proptest::proptest! {
    #[test]
    fn any_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let _ = peek(&b);
    }

    #[test]
    fn any_prefix_of_a_hello_is_need_more(cut in 0usize..60) {
        let h = hello(&[sni(&["api.example.com"])]);
        let cut = cut.min(h.len() - 1);
        proptest::prop_assert_eq!(peek(&h[..cut]), Peeked::NeedMore);
    }
}

#[test]
fn a_hello_split_over_two_records_is_unreadable() {
    // The handshake message cut after 40 bytes into two records: the first
    // record holds a fragment, which must not pass for "another protocol".
    let h = hello(&[sni(&["denied.example"])]);
    let msg = &h[5..];
    let (a, b) = msg.split_at(40);
    let mut split = Vec::new();
    for part in [a, b] {
        split.extend_from_slice(&[0x16, 0x03, 0x01]);
        split.extend_from_slice(&(part.len() as u16).to_be_bytes());
        split.extend_from_slice(part);
    }
    assert_eq!(peek(&split), Peeked::Unreadable);
}
