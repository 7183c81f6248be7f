//! Idle keep-alive connections to origins (or the upstream proxy), so
//! forwarded HTTP requests do not each pay a TCP handshake and leave a
//! TIME_WAIT socket behind (which, at a few hundred requests per second,
//! exhausts the local port range).
//!
//! Connections are keyed by the address that was checked and dialled, so a
//! pooled connection is only ever reused for a request whose own checks
//! allowed that same address.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1::SendRequest;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a pooled connection leads to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// An origin server at this address.
    Direct(SocketAddr),
    /// The upstream proxy.
    Upstream,
}

type Sender = SendRequest<BoxBody<Bytes, hyper::Error>>;

/// Idle connections kept per key.
const MAX_IDLE_PER_KEY: usize = 128;
/// Idle connections older than this are not reused (servers close idle
/// keep-alive connections after a few seconds to minutes).
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);

/// The pool.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Key, Vec<(Sender, Instant)>>>,
}

impl Pool {
    /// An open idle connection for `key`, if any (it may need a moment to
    /// become ready: the caller awaits `ready()`).
    pub fn take(&self, key: &Key) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some((s, since)) = list.pop() {
            if !s.is_closed() && since.elapsed() < MAX_IDLE_AGE {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to the end.
    pub fn put(&self, key: Key, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key).or_default();
            list.retain(|(s, since)| !s.is_closed() && since.elapsed() < MAX_IDLE_AGE);
            if list.len() < MAX_IDLE_PER_KEY {
                list.push((sender, Instant::now()));
            }
        }
    }

    /// Drops every idle connection (their connection tasks then end).
    pub fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}
