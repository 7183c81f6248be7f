use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use proptest::prelude::*;

use super::*;
use crate::resolver::fake_ip::in_pool;

fn policy(allow: &[&str], deny: &[&str]) -> ProxyPolicy {
    ProxyPolicy {
        allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
        deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
        ..Default::default()
    }
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

fn ask(p: &ProxyPolicy, pool: &mut FakeIps, m: &Message) -> (Message, Outcome) {
    let a = answer(p, pool, &m.to_vec().unwrap()).expect("an answer");
    (Message::from_vec(&a.response).unwrap(), a.outcome)
}

#[test]
fn an_allowed_name_gets_a_pool_address_echoing_id_and_question() {
    let p = policy(&["api.example.com"], &[]);
    let mut pool = FakeIps::default();
    let q = query("api.example.com.", RecordType::A);
    let (r, o) = ask(&p, &mut pool, &q);
    assert_eq!(r.metadata.id, q.metadata.id);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.recursion_desired && r.metadata.recursion_available);
    assert_eq!(r.queries, q.queries);
    let [rec] = r.answers.as_slice() else {
        panic!("one answer: {r:?}")
    };
    let RData::A(A(a)) = rec.data else {
        panic!("an A record: {rec:?}")
    };
    assert!(in_pool(a.into()));
    assert_eq!(pool.name_of(a.into()), Some("api.example.com"));
    assert!(matches!(o, Outcome::Answered { ref name, .. } if name == "api.example.com"));
    // AAAA: the same name's IPv6 twin; asked again: the same address.
    let (r6, _) = ask(&p, &mut pool, &query("api.example.com.", RecordType::AAAA));
    let RData::AAAA(AAAA(a6)) = r6.answers[0].data else {
        panic!("an AAAA record")
    };
    assert_eq!(pool.name_of(a6.into()), Some("api.example.com"));
    let (again, _) = ask(&p, &mut pool, &q);
    assert_eq!(again.answers[0].data, RData::A(A(a)));
    assert_eq!(pool.len(), 1);
}

#[test]
fn names_the_policy_refuses_get_nxdomain_and_no_address() {
    let p = policy(&["*.example.com", "example.org"], &["bad.example.com"]);
    let mut pool = FakeIps::default();
    for (name, why) in [
        ("example.com.", "the apex of a wildcard"),
        ("bad.example.com.", "a deny rule"),
        ("evil.test.", "no rule"),
        ("a.example.org.", "below an exact rule"),
        ("169.254.169.254.in-addr.arpa.", "a reverse name"),
    ] {
        let (r, o) = ask(&p, &mut pool, &query(name, RecordType::A));
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{why}");
        assert!(r.answers.is_empty(), "{why}");
        assert!(
            matches!(
                o,
                Outcome::NotAllowed {
                    refusal: Some(_),
                    ..
                }
            ),
            "{why}: {o:?}"
        );
    }
    assert!(pool.is_empty(), "no address handed out for a refused name");
    let (r, _) = ask(&p, &mut pool, &query("x.example.com.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn a_name_denied_on_every_port_it_is_allowed_on_does_not_resolve() {
    // Allowed on 443 only; denied on the defaults (80, 443).
    let p = policy(&["example.com:443"], &["example.com"]);
    let mut pool = FakeIps::default();
    let (r, _) = ask(&p, &mut pool, &query("example.com.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // Allowed on 22 only (git over SSH): resolves.
    let p = policy(&["github.com:22"], &[]);
    let (r, _) = ask(&p, &mut pool, &query("github.com.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn types_that_carry_data_are_refused_and_service_bindings_are_empty() {
    let p = policy(&["api.example.com"], &[]);
    let mut pool = FakeIps::default();
    for t in [
        RecordType::TXT,
        RecordType::NULL,
        RecordType::MX,
        RecordType::SRV,
        RecordType::ANY,
        RecordType::Unknown(65280),
    ] {
        let (r, o) = ask(&p, &mut pool, &query("api.example.com.", t));
        assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{t}");
        assert!(r.answers.is_empty(), "{t}");
        assert!(matches!(o, Outcome::Refused { .. }), "{t}: {o:?}");
    }
    for t in [RecordType::HTTPS, RecordType::SVCB, RecordType::CNAME] {
        let (r, o) = ask(&p, &mut pool, &query("api.example.com.", t));
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{t}");
        assert!(r.answers.is_empty(), "{t}");
        assert!(matches!(o, Outcome::NoData { .. }), "{t}");
    }
    // A refused name asking TXT: NXDOMAIN, the same as for A.
    let (r, _) = ask(&p, &mut pool, &query("data.evil.test.", RecordType::TXT));
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(pool.is_empty());
}

#[test]
fn the_owner_name_keeps_the_case_asked() {
    // Resolvers randomise the case (0x20) and check it comes back.
    let p = policy(&["api.example.com"], &[]);
    let mut pool = FakeIps::default();
    let (r, _) = ask(&p, &mut pool, &query("aPi.ExAmple.COM.", RecordType::A));
    assert_eq!(r.answers[0].name.to_ascii(), "aPi.ExAmple.COM.");
    assert_eq!(r.queries[0].name().to_ascii(), "aPi.ExAmple.COM.");
}

#[test]
fn names_that_are_not_host_names_get_nxdomain() {
    let p = policy(&["*.example.com"], &[]);
    let mut pool = FakeIps::default();
    let mut binary = Name::from_ascii("example.com.").unwrap();
    binary = Name::from_labels(std::iter::once(&b"a\x00b"[..]).chain(binary.iter())).unwrap();
    for name in [
        binary,
        Name::from_ascii("under_score.example.com.").unwrap(),
    ] {
        let mut m = Message::query();
        m.add_query(Query::query(name.clone(), RecordType::A));
        let (r, o) = ask(&p, &mut pool, &m);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(
            matches!(o, Outcome::NotAllowed { refusal: None, .. }),
            "{o:?}"
        );
    }
    assert!(pool.is_empty());
}

#[test]
fn other_classes_are_refused() {
    let p = policy(&["api.example.com"], &[]);
    let mut pool = FakeIps::default();
    let mut q = Query::query(Name::from_ascii("api.example.com.").unwrap(), RecordType::A);
    q.set_query_class(DNSClass::CH);
    let mut m = Message::query();
    m.add_query(q);
    let (r, _) = ask(&p, &mut pool, &m);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn malformed_and_foreign_messages() {
    let p = policy(&["api.example.com"], &[]);
    let mut pool = FakeIps::default();
    assert!(answer(&p, &mut pool, &[0u8; 11]).is_none(), "no header");
    // A response is never answered (no loops between resolvers).
    let mut resp = query("api.example.com.", RecordType::A);
    resp.metadata.message_type = hickory_proto::op::MessageType::Response;
    assert!(answer(&p, &mut pool, &resp.to_vec().unwrap()).is_none());
    // Garbage after a header: FORMERR with the id.
    let mut junk = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0xff; 5]);
    let a = answer(&p, &mut pool, &junk).unwrap();
    let r = Message::from_vec(&a.response).unwrap();
    assert_eq!(r.metadata.id, 0x1234);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // Two questions: FORMERR.
    let mut two = query("api.example.com.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("x.test.").unwrap(),
        RecordType::A,
    ));
    let (r, o) = ask(&p, &mut pool, &two);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert!(matches!(o, Outcome::Malformed(_)));
    // An UPDATE: NOTIMP.
    let mut upd = query("api.example.com.", RecordType::A);
    upd.metadata.op_code = OpCode::Update;
    let (r, _) = ask(&p, &mut pool, &upd);
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    assert!(pool.is_empty());
}

#[test]
fn edns_is_answered_with_edns() {
    let p = policy(&["api.example.com"], &[]);
    let mut pool = FakeIps::default();
    let mut q = query("api.example.com.", RecordType::A);
    let mut e = Edns::new();
    e.set_max_payload(4096);
    q.set_edns(e);
    let (r, _) = ask(&p, &mut pool, &q);
    assert_eq!(r.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    let (plain, _) = ask(&p, &mut pool, &query("api.example.com.", RecordType::A));
    assert!(plain.edns.is_none());
}

#[test]
fn a_full_pool_fails_new_names_only() {
    let p = policy(&["*.example.com"], &[]);
    let mut pool = FakeIps::new(1);
    let (r, _) = ask(&p, &mut pool, &query("a.example.com.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let (r, o) = ask(&p, &mut pool, &query("b.example.com.", RecordType::A));
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(matches!(o, Outcome::Refused { .. }));
    let (r, _) = ask(&p, &mut pool, &query("a.example.com.", RecordType::AAAA));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
}

fn rtype() -> impl Strategy<Value = RecordType> {
    prop_oneof![
        Just(RecordType::A),
        Just(RecordType::AAAA),
        Just(RecordType::TXT),
        Just(RecordType::HTTPS),
        any::<u16>().prop_map(RecordType::from),
    ]
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("example".to_string()),
        Just("com".to_string()),
        Just("api".to_string()),
        Just("evil".to_string()),
        "[a-zA-Z0-9-]{1,8}",
    ]
}

proptest! {
    /// Whatever is asked, an address comes back only for a name the
    /// proxy's own rule check allows, and it is a pool address that maps
    /// back to that name.
    #[test]
    fn addresses_only_for_names_check_name_allows(
        labels in proptest::collection::vec(label(), 1..5),
        t in rtype(),
    ) {
        let p = policy(&["api.example.com", "*.example.com:22"], &["evil.example.com"]);
        let mut pool = FakeIps::default();
        let name = format!("{}.", labels.join("."));
        let Ok(n) = Name::from_ascii(&name) else { return Ok(()) };
        let mut m = Message::query();
        m.add_query(Query::query(n, t));
        let a = answer(&p, &mut pool, &m.to_vec().unwrap()).unwrap();
        let r = Message::from_vec(&a.response).unwrap();
        let normalized = normalize_host(&name).ok();
        let allowed = normalized.as_deref().is_some_and(|n| p.check_name(n).is_ok());
        for rec in &r.answers {
            prop_assert!(allowed, "{name} answered but not allowed");
            let ip: IpAddr = match rec.data {
                RData::A(A(a)) => a.into(),
                RData::AAAA(AAAA(a)) => a.into(),
                ref other => panic!("unexpected record {other:?}"),
            };
            prop_assert_eq!(pool.name_of(ip), normalized.as_deref());
        }
        if !allowed {
            prop_assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
            prop_assert!(pool.is_empty());
        }
    }

    /// Arbitrary bytes never panic, and any answer carries the query's id.
    #[test]
    fn any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let p = policy(&["api.example.com"], &[]);
        let mut pool = FakeIps::default();
        if let Some(a) = answer(&p, &mut pool, &bytes) {
            prop_assert!(a.response.len() >= 12);
            prop_assert_eq!(&a.response[..2], &bytes[..2]);
            prop_assert!(a.response[2] & 0x80 != 0, "a response");
        }
    }
}

#[test]
fn pool_addresses_are_in_the_documented_ranges() {
    let p = policy(&["api.example.com"], &[]);
    let mut pool = FakeIps::default();
    let (r, _) = ask(&p, &mut pool, &query("api.example.com.", RecordType::A));
    let RData::A(A(a)) = r.answers[0].data else {
        panic!()
    };
    assert_eq!(a, Ipv4Addr::new(198, 18, 0, 1));
    let (r, _) = ask(&p, &mut pool, &query("api.example.com.", RecordType::AAAA));
    let RData::AAAA(AAAA(a)) = r.answers[0].data else {
        panic!()
    };
    assert_eq!(a, Ipv6Addr::new(0xfd6e, 0x6f6e, 0x6f00, 0, 0, 0, 0, 1));
}
