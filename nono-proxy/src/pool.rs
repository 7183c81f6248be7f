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
use std::collections::{HashMap, VecDeque};
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
    /// Per key, oldest first: `take` reuses the newest (back), `put`
    /// drops expired ones from the front, so neither reads the clock for
    /// every idle connection on every request (that scan was ~2% of the
    /// proxy's CPU per forwarded request in a `perf` profile).
    idle: Mutex<HashMap<Key, VecDeque<(Sender, Instant)>>>,
}

impl Pool {
    /// An open idle connection for `key`, if any (it may need a moment to
    /// become ready: the caller awaits `ready()`).
    pub fn take(&self, key: &Key) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        while let Some((s, since)) = list.pop_back() {
            if !s.is_closed() && now.duration_since(since) < MAX_IDLE_AGE {
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
            let now = Instant::now();
            let list = idle.entry(key).or_default();
            // Expired ones are at the front.
            while list
                .front()
                .is_some_and(|(_, since)| now.duration_since(*since) >= MAX_IDLE_AGE)
            {
                list.pop_front();
            }
            if list.len() >= MAX_IDLE_PER_KEY {
                // Full: make room by dropping closed ones (rare).
                list.retain(|(s, _)| !s.is_closed());
            }
            if list.len() < MAX_IDLE_PER_KEY {
                list.push_back((sender, now));
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
