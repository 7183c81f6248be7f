//! The daemon's wire protocol: length-prefixed, versioned JSON frames.
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON:
//! `{"v": 1, "body": {...}}`. Every frame carries the version, so a client
//! and a daemon of different builds fail with a clear error instead of
//! misreading each other; unknown versions, unknown fields, oversized and
//! truncated frames are refused by [`decode`] before anything acts on them.
//! Pure code: the fuzz target feeds [`decode`] arbitrary bytes.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// The largest frame either side accepts. A policy is at most a few KiB of
/// JSON; anything bigger is a broken or hostile peer.
pub const MAX_FRAME: usize = 64 * 1024;

/// Errors of decoding a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME}")]
    TooLarge(usize),
    /// The frame is not valid JSON for a message of this protocol.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The peer speaks another protocol version.
    #[error("protocol version {0} is not supported (this build speaks {VERSION})")]
    Version(u32),
}

/// A policy as requested by a client (the fields of `nono_common::Policy`,
/// without its fixed-size arrays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WirePolicy {
    /// Every loopback port is allowed.
    pub loopback_any: bool,
    /// Loopback ports allowed (when not `loopback_any`).
    pub loopback_ports: Vec<u16>,
    /// Proxy endpoints: canonical 16-byte address (v4 as v4-mapped) and port.
    pub proxies: Vec<([u8; 16], u16)>,
    /// Audit mode (`exec --audit`): refusals a rule could lift are let
    /// through and reported as would-deny. Absent: enforce.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
    /// Transparent mode: the ports of the client's listeners on loopback
    /// (proxy on 127.0.0.1, on ::1, resolver on 127.0.0.1, on ::1; zero: none).
    /// Absent: off.
    #[serde(default, skip_serializing_if = "all_zero")]
    pub redirects: [u16; 4],
}

fn all_zero(r: &[u16; 4]) -> bool {
    r.iter().all(|p| *p == 0)
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The daemon's version, uptime and sandbox count.
    Status,
    /// Create a sandbox owned by this connection with this policy (nested
    /// in the caller's own sandbox, and narrowed to it, if it has one).
    Create {
        /// The id the client chose (16 hex digits, like every sandbox id;
        /// the daemon refuses one that is malformed or taken).
        id: String,
        /// The requested policy.
        policy: WirePolicy,
    },
    /// Move the process whose pidfd rides along (`SCM_RIGHTS`) into this
    /// connection's sandbox: it must be the caller's own child, with the
    /// caller's uid, in the caller's cgroup.
    Place,
    /// Re-attach this connection to a sandbox created through a previous
    /// connection (the daemon restarted), proving ownership with its token.
    Resume {
        /// The sandbox id.
        id: String,
        /// The secret returned by `Create`.
        token: String,
    },
    /// End this connection's sandbox: kill what runs in it and remove it.
    End,
    /// Transparent mode: where the socket with this cookie, redirected to
    /// the sandbox's proxy, really dialled. Asked on a connection of its
    /// own by the sandbox's owner (its token proves it); answered only
    /// when the kernel's record names that sandbox's cgroup.
    Lookup {
        /// The sandbox id.
        id: String,
        /// The secret returned by `Create`.
        token: String,
        /// The socket cookie (the client finds it with `sock_diag`).
        cookie: u64,
    },
}

/// What the daemon answers; `Event` frames arrive unasked once a sandbox
/// exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// Answer to `Status`.
    Status {
        /// The daemon's package version.
        version: String,
        /// Seconds since it started.
        uptime_secs: u64,
        /// Live sandboxes (all users).
        sandboxes: usize,
        /// Cgroups with a policy entry in the kernel maps (equal to
        /// `sandboxes` unless something leaked).
        policy_entries: usize,
    },
    /// Answer to `Create`.
    Created {
        /// The sandbox cgroup's path.
        cgroup: String,
        /// Whether it is nested in the caller's sandbox (policy narrowed).
        nested: bool,
        /// Secret for `Resume` after a daemon restart.
        token: String,
    },
    /// Answer to `Place`.
    Placed,
    /// Answer to `Resume`.
    Resumed,
    /// Answer to `Lookup`: the canonical address (v4 as v4-mapped) and
    /// port dialled; `None` when there is no record (or not this
    /// sandbox's).
    Original {
        /// Address and port.
        dialled: Option<([u8; 16], u16)>,
    },
    /// Answer to `End`: the sandbox is gone.
    Ended {
        /// Events the daemon could not deliver to this sandbox (its queue
        /// or the kernel ring was full).
        dropped: u64,
    },
    /// A denial record of this sandbox, as the BPF program wrote it.
    Event {
        /// The raw `nono_common::DenyEvent` bytes.
        raw: Vec<u8>,
    },
    /// The request was refused or failed; the connection stays usable
    /// unless the error says otherwise.
    Error {
        /// What went wrong, for a human.
        message: String,
    },
}

#[derive(Serialize)]
struct Out<'a, T> {
    v: u32,
    body: &'a T,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In<T> {
    /// Checked through [`VersionOnly`] first; present so
    /// `deny_unknown_fields` accepts it.
    #[serde(rename = "v")]
    _v: u32,
    body: T,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// A message as one frame (length prefix included).
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    // Serialising these plain types cannot fail.
    let json = serde_json::to_vec(&Out { v: VERSION, body }).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// The length a frame's 4-byte prefix announces, checked against
/// [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, ProtocolError> {
    let n = u32::from_be_bytes(prefix) as usize;
    if n > MAX_FRAME {
        return Err(ProtocolError::TooLarge(n));
    }
    Ok(n)
}

/// A message from a frame's payload (without the prefix).
pub fn decode<T: Serialize + for<'de> Deserialize<'de>>(
    payload: &[u8],
) -> Result<T, ProtocolError> {
    if payload.len() > MAX_FRAME {
        return Err(ProtocolError::TooLarge(payload.len()));
    }
    // The version first, so a newer peer gets "version" and not "unknown
    // field".
    let v: VersionOnly =
        serde_json::from_slice(payload).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if v.v != VERSION {
        return Err(ProtocolError::Version(v.v));
    }
    let m: In<T> =
        serde_json::from_slice(payload).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    // serde ignores fields beside the tag of a variant without fields
    // (`{"type":"status","uid":0}`) despite `deny_unknown_fields`: refuse a
    // body that is not exactly what the message encodes to.
    let raw: In<serde_json::Value> =
        serde_json::from_slice(payload).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if serde_json::to_value(&m.body).ok().as_ref() != Some(&raw.body) {
        return Err(ProtocolError::Malformed(
            "unknown fields in the message".to_string(),
        ));
    }
    Ok(m.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(frame: &[u8]) -> &[u8] {
        let n = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn every_request_round_trips() {
        for r in [
            Request::Status,
            Request::Create {
                id: "0123456789abcdef".into(),
                policy: WirePolicy {
                    loopback_any: false,
                    loopback_ports: vec![8080],
                    proxies: vec![([0; 16], 3128)],
                    audit: true,
                    redirects: [4001, 4002, 5301, 0],
                },
            },
            Request::Place,
            Request::Resume {
                id: "abc".into(),
                token: "t".into(),
            },
            Request::End,
            Request::Lookup {
                id: "abc".into(),
                token: "t".into(),
                cookie: u64::MAX,
            },
        ] {
            let f = encode(&r);
            assert_eq!(decode::<Request>(payload(&f)).unwrap(), r);
        }
    }

    #[test]
    fn other_versions_unknown_fields_and_garbage_are_refused() {
        assert_eq!(
            decode::<Request>(br#"{"v":2,"body":{"type":"status"}}"#),
            Err(ProtocolError::Version(2))
        );
        assert!(matches!(
            decode::<Request>(br#"{"v":1,"body":{"type":"status"},"x":1}"#),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(br#"{"v":1,"body":{"type":"create","id":"0123456789abcdef","policy":{"loopback_any":true,"loopback_ports":[],"proxies":[],"admin":true}}}"#),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(br#"{"v":1,"body":{"type":"status","uid":0}}"#),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(br#"{"v":1,"body":{"type":"become_root"}}"#),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(b"\xff\x00garbage"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(br#"{"v":1,"body":{"type":"create"#),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_frames_are_refused_from_the_prefix() {
        assert_eq!(
            frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()),
            Err(ProtocolError::TooLarge(MAX_FRAME + 1))
        );
        assert_eq!(frame_len((MAX_FRAME as u32).to_be_bytes()), Ok(MAX_FRAME));
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn wire_policy() -> impl Strategy<Value = WirePolicy> {
            (
                any::<bool>(),
                proptest::collection::vec(any::<u16>(), 0..8),
                proptest::collection::vec((any::<[u8; 16]>(), any::<u16>()), 0..4),
                any::<bool>(),
                any::<[u16; 4]>(),
            )
                .prop_map(
                    |(loopback_any, loopback_ports, proxies, audit, redirects)| WirePolicy {
                        loopback_any,
                        loopback_ports,
                        proxies,
                        audit,
                        redirects,
                    },
                )
        }

        fn request() -> impl Strategy<Value = Request> {
            prop_oneof![
                Just(Request::Status),
                Just(Request::Place),
                Just(Request::End),
                (".*", wire_policy()).prop_map(|(id, policy)| Request::Create { id, policy }),
                (".*", ".*").prop_map(|(id, token)| Request::Resume { id, token }),
            ]
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode::<Request>(&bytes);
                if bytes.len() >= 4 {
                    let _ = frame_len(bytes[..4].try_into().unwrap());
                }
            }

            #[test]
            fn json_shaped_bytes_never_panic(s in r#"\{"v":[0-9]{1,3},"body":\{"type":"[a-z_]{0,8}".{0,40}\}\}"#) {
                let _ = decode::<Request>(s.as_bytes());
            }

            #[test]
            fn requests_round_trip(r in request()) {
                let f = encode(&r);
                let n = frame_len(f[..4].try_into().unwrap()).unwrap();
                prop_assert_eq!(n, f.len() - 4);
                prop_assert_eq!(decode::<Request>(&f[4..]).unwrap(), r);
            }
        }
    }
}
