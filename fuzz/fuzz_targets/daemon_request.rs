//! The daemon's frame decoding: `frame_len` on the first 4 bytes, `decode`
//! on the rest, as `Request` (what any local user can send) and `Reply`.
//!
//! Checks: nothing panics; `frame_len` accepts exactly the prefixes up to
//! `MAX_FRAME`; a decoded request re-encodes to a frame that decodes to the
//! same request (no request is read two ways).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nono_agent::daemon::protocol::{decode, encode, frame_len, Reply, Request, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let prefix = [data[0], data[1], data[2], data[3]];
        let n = u32::from_be_bytes(prefix) as usize;
        match frame_len(prefix) {
            Ok(m) => assert!(m == n && n <= MAX_FRAME),
            Err(_) => assert!(n > MAX_FRAME),
        }
        let _ = decode::<Request>(&data[4..]);
    }
    if let Ok(r) = decode::<Request>(data) {
        let f = encode(&r);
        let n = frame_len([f[0], f[1], f[2], f[3]]).expect("an encoded request fits");
        assert_eq!(n, f.len() - 4);
        assert_eq!(decode::<Request>(&f[4..]).expect("re-encoded request decodes"), r);
    }
    let _ = decode::<Reply>(data);
});
