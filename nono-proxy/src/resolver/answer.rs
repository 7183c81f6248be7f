//! One DNS question in, one answer out, decided by the proxy's own name
//! rules ([`ProxyPolicy::check_name`]): the same decision a CONNECT to the
//! name would get, so a name resolves exactly when the proxy would let a
//! connection to it through on some port.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::fake_ip::{FakeIps, PoolFull};
use crate::pattern::normalize_host;
use crate::policy::{ProxyPolicy, Refusal, Rule};

/// Seconds clients may cache an answer. The pool never gives an address to
/// another name while it lives, so any value is safe; short keeps a cache
/// outside the sandbox (none should exist) from holding them long.
pub const TTL: u32 = 60;

/// The largest UDP answer advertised with EDNS (the DNS flag day value).
const EDNS_PAYLOAD: u16 = 1232;

/// What was decided for one query, for events and the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An allowed name's A or AAAA question, answered from the pool.
    Answered {
        /// The normalised name.
        name: String,
        /// A or AAAA.
        qtype: RecordType,
        /// The synthetic address given.
        addr: IpAddr,
        /// The rule that allows the name (`None` in audit mode when no
        /// rule does: then `audited` says what would have refused it).
        rule: Option<Rule>,
        /// Audit mode: the refusal the name was let through despite.
        audited: Option<Refusal>,
    },
    /// An allowed name asked for CNAME, HTTPS or SVCB: an empty answer.
    NoData {
        /// The normalised name.
        name: String,
        /// The type asked for.
        qtype: RecordType,
    },
    /// An allowed name asked for a type that could carry data (TXT, NULL,
    /// MX...), a class other than IN, or the pool is full: REFUSED (or
    /// SERVFAIL for the pool).
    Refused {
        /// The name as asked (normalised when it could be).
        name: String,
        /// The type asked for.
        qtype: RecordType,
        /// Why, in words.
        why: &'static str,
    },
    /// A name the policy does not allow, or that is not a host name:
    /// NXDOMAIN, and nothing asked anywhere.
    NotAllowed {
        /// The name as asked (normalised when it could be).
        name: String,
        /// The type asked for.
        qtype: RecordType,
        /// The policy's refusal; `None` for a name that is no host name.
        refusal: Option<Refusal>,
    },
    /// Not a single standard query: FORMERR or NOTIMP.
    Malformed(&'static str),
}

/// The response bytes and the decision behind them.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The DNS message to send back.
    pub response: Vec<u8>,
    /// What was decided.
    pub outcome: Outcome,
}

/// Answers one DNS message. `None` when there is nothing to answer: fewer
/// than 12 bytes (no header), or a message that is itself a response
/// (answering those would let two resolvers loop).
pub fn answer(policy: &ProxyPolicy, pool: &mut FakeIps, query: &[u8]) -> Option<Answered> {
    answer_audited(policy, pool, query, false)
}

/// [`answer`], in audit mode when `audit` is set: a name the rules refuse
/// (and a rule could allow, [`Refusal::auditable`]) is answered as an
/// allowed one and the refusal recorded, so the connection that follows
/// reaches the proxy, which lets it through and records it the same way.
pub fn answer_audited(
    policy: &ProxyPolicy,
    pool: &mut FakeIps,
    query: &[u8],
    audit: bool,
) -> Option<Answered> {
    if query.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    // QR bit: a response.
    if query[2] & 0x80 != 0 {
        return None;
    }
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return Some(bare(id, ResponseCode::FormErr, "unparseable message")),
    };
    if msg.metadata.message_type != MessageType::Query {
        return None;
    }
    if msg.metadata.op_code != OpCode::Query {
        return Some(bare(id, ResponseCode::NotImp, "not a standard query"));
    }
    let [q] = msg.queries.as_slice() else {
        return Some(bare(id, ResponseCode::FormErr, "not exactly one question"));
    };
    let asked = q.name().to_ascii();
    let (code, records, outcome) = decide(policy, pool, q, &asked, audit);
    let mut r = Message::response(id, OpCode::Query);
    r.metadata.recursion_desired = msg.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.metadata.authoritative = true;
    r.metadata.response_code = code;
    r.add_query(q.clone());
    r.add_answers(records);
    if msg.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        r.set_edns(e);
    }
    match r.to_vec() {
        Ok(response) => Some(Answered { response, outcome }),
        Err(_) => Some(bare(id, ResponseCode::ServFail, "answer not encodable")),
    }
}

fn decide(
    policy: &ProxyPolicy,
    pool: &mut FakeIps,
    q: &Query,
    asked: &str,
    audit: bool,
) -> (ResponseCode, Vec<Record>, Outcome) {
    let qtype = q.query_type();
    let name = match normalize_host(asked) {
        Ok(n) => n,
        Err(_) => {
            let o = Outcome::NotAllowed {
                name: asked.to_string(),
                qtype,
                refusal: None,
            };
            return (ResponseCode::NXDomain, Vec::new(), o);
        }
    };
    let (rule, audited) = match policy.check_name(&name) {
        Ok(rule) => (Some(rule), None),
        Err(refusal) if audit && refusal.auditable() => (None, Some(refusal)),
        Err(refusal) => {
            let o = Outcome::NotAllowed {
                name,
                qtype,
                refusal: Some(refusal),
            };
            return (ResponseCode::NXDomain, Vec::new(), o);
        }
    };
    if q.query_class() != DNSClass::IN {
        let o = Outcome::Refused {
            name,
            qtype,
            why: "class other than IN",
        };
        return (ResponseCode::Refused, Vec::new(), o);
    }
    match qtype {
        RecordType::A | RecordType::AAAA => match pool.assign(&name) {
            Ok((v4, v6)) => {
                let (rdata, addr) = if qtype == RecordType::A {
                    (RData::A(A(v4)), IpAddr::V4(v4))
                } else {
                    (RData::AAAA(AAAA(v6)), IpAddr::V6(v6))
                };
                let record = Record::from_rdata(q.name().clone(), TTL, rdata);
                let o = Outcome::Answered {
                    name,
                    qtype,
                    addr,
                    rule,
                    audited,
                };
                (ResponseCode::NoError, vec![record], o)
            }
            Err(PoolFull(_)) => {
                let o = Outcome::Refused {
                    name,
                    qtype,
                    why: "the synthetic address pool is full",
                };
                (ResponseCode::ServFail, Vec::new(), o)
            }
        },
        RecordType::CNAME | RecordType::HTTPS | RecordType::SVCB => (
            ResponseCode::NoError,
            Vec::new(),
            Outcome::NoData { name, qtype },
        ),
        _ => {
            let o = Outcome::Refused {
                name,
                qtype,
                why: "query type not answered (only A and AAAA)",
            };
            (ResponseCode::Refused, Vec::new(), o)
        }
    }
}

/// A header-only answer (no question echoed: it could not be read).
fn bare(id: u16, code: ResponseCode, why: &'static str) -> Answered {
    let mut r = Message::error_msg(id, OpCode::Query, code);
    r.metadata.recursion_available = true;
    // A header-only message always encodes; fall back to the 12 bytes by
    // hand if the library ever says otherwise.
    let response = r.to_vec().unwrap_or_else(|_| {
        let mut b = vec![0u8; 12];
        b[..2].copy_from_slice(&id.to_be_bytes());
        b[2] = 0x80;
        b[3] = 0x80 | (u16::from(code) as u8 & 0x0f);
        b
    });
    Answered {
        response,
        outcome: Outcome::Malformed(why),
    }
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
