//! `SocketAddr` <-> `sockaddr_storage`: the agent library's
//! (`nono_agent::selftest::sockaddr`, shared with selftest's probe),
//! re-exported so `nono_tests::sockaddr` paths stay.

pub use nono_agent::selftest::sockaddr::{parse, storage};
