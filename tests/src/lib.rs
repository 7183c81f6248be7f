//! Integration test harness for `nono-agent`.
//!
//! * [`channels`]: receivers for the channel battery (inbound connector,
//!   held TCP receiver, SYN burst, unix receivers with credentials).
//! * [`daemon`]: a private `nono-agent daemon` per test or per test binary,
//!   removed completely on drop.
//! * [`netns`]: client/server network namespaces joined by a veth pair.
//! * [`oracle`]: the server side "truth": TCP listeners and an AF_PACKET sniffer
//!   in the server namespace that count what actually arrived.
//! * [`proxylab`]: the filtering-proxy fixture: HTTP/HTTPS/git/echo servers in
//!   the server namespace, a logging DNS server, a test CA, and helpers that
//!   run curl, Python and raw-socket clients inside `nono-agent exec`.
//! * [`probe_vectors`]: the names of every `nono-probe` attempt and mode,
//!   declared once for the probe and the tests.
//! * [`runner`]: runs `nono-probe` outside and inside a sandbox, parses results,
//!   and guards against leftovers.
//! * [`sockaddr`]: `SocketAddr` <-> `sockaddr_storage` for raw socket calls.
//! * [`vectors`]: the single list of escape vectors, reusable per enforcer.
//! * [`sys`]: prerequisites, binary discovery, mount discovery, commands with
//!   timeouts.
//!
//! Every test needs root and a real kernel; a missing prerequisite panics with
//! a clear message rather than skipping.

pub mod channels;
pub mod daemon;
pub mod netns;
pub mod oracle;
pub mod probe_vectors;
pub mod profilelab;
pub mod proxylab;
pub mod runner;
pub mod sockaddr;
pub mod sys;
pub mod tlshost;
pub mod vectors;

pub use netns::NetFixture;
pub use oracle::Oracle;
pub use runner::{Harness, ProbeResult};

/// Defines, in module `$module`, one `#[test]` per listed function calling
/// `super::f($e)` (e.g. `$e` an [`runner::Enforcement`]), so a failure
/// names both the check and the enforcement.
#[macro_export]
macro_rules! per_enforcement {
    ($module:ident, $e:expr, [$($f:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $f() {
                    super::$f($e);
                }
            )*
        }
    };
}
