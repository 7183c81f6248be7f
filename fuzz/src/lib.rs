//! The agent's proxy parsing code, compiled from `nono-agent/src` by path so
//! the fuzz targets exercise exactly what the agent runs (nono-agent is a
//! binary crate; there is no library to depend on).
//!
//! * `proxy::pattern`, `proxy::policy`: self-contained (idna, ipnet).
//! * `proxy::server` (for `check_forward_request`, `authorized`,
//!   `strip_hop_by_hop`) needs its siblings `resolve` and `upstream` and the
//!   crate's `events` module, so those are included as well.
#![allow(dead_code, unused_imports, clippy::all)]

#[path = "../../nono-agent/src/events.rs"]
pub mod events;

pub mod proxy;
