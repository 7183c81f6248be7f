//! `nono-agent/src/proxy/*` without `mod.rs` (which starts listeners).

#[path = "../../nono-agent/src/proxy/pattern.rs"]
pub mod pattern;

#[path = "../../nono-agent/src/proxy/policy.rs"]
pub mod policy;

#[path = "../../nono-agent/src/proxy/resolve.rs"]
pub mod resolve;

#[path = "../../nono-agent/src/proxy/server.rs"]
pub mod server;

#[path = "../../nono-agent/src/proxy/upstream.rs"]
pub mod upstream;
