//! The sandbox's own DNS resolver, for transparent mode (issue 14): queries
//! the kernel hooks send here are answered from the sandbox's policy alone,
//! and nothing is ever asked upstream.
//!
//! * An allowed name gets a **synthetic address** from a reserved pool
//!   ([`fake_ip`]): the proxy later knows the name from the address a
//!   redirected connection was dialled to, for any TCP protocol (SSH, gRPC,
//!   not only TLS with SNI or HTTP with `Host`), and resolves the real
//!   addresses itself, checked as for any proxied request. Real addresses
//!   would need an upstream lookup at resolution time and leave the proxy
//!   guessing the name of a bare TCP connection.
//! * Any other name gets NXDOMAIN without leaving the machine: a query name
//!   cannot carry data out.
//! * Query types that could carry data back or out (TXT, NULL, ...) are
//!   refused; CNAME, HTTPS and SVCB queries of allowed names get an empty
//!   answer, so clients fall back to A/AAAA (and no ECH keys are handed
//!   out: an Encrypted ClientHello would hide the name from the proxy).
//!
//! [`answer`] is the pure decision (bytes in, bytes out); [`server`] the UDP
//! and TCP plumbing.

pub mod answer;
pub mod events;
pub mod fake_ip;
pub mod server;

pub use answer::{answer, answer_audited, Answered, Outcome};
pub use fake_ip::{FakeIps, PoolFull};
