//! Channels: device binding and capability-gated control messages.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use serde_json::Value;

use crate::args::{usage, Args};
use crate::attempt::{Attempt, Steps};
use crate::reroute::refused;
use crate::sock::{
    iface_index, sendmsg_cmsg, sendto_fd, setsockopt_bytes, setsockopt_i32, udp_socket, PAYLOAD,
};

/// SO_BINDTODEVICE (`--how name`) or SO_BINDTOIFINDEX (`--how index`) of a
/// UDP socket to `--iface`, then `--count` datagrams to 127.0.0.1:--port
/// (no capability needed since Linux 5.7 for an unbound socket: the packet
/// leaves through that interface once a host there answers ARP for
/// 127.0.0.1). Adds `refused_at` (the step that was refused, or null).
pub(crate) fn bindtodevice_loopback(
    args: &Args,
    steps: &mut Steps,
    extra: &mut serde_json::Map<String, Value>,
) -> Attempt {
    extra.insert("refused_at".into(), Value::Null);
    let iface = args.req("iface");
    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port());
    let fd = match udp_socket(&dst.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let how = args.get("how").unwrap_or("name");
    if let Err(a) = bind_device(fd.as_raw_fd(), how, iface) {
        return refused(extra, "setsockopt", a);
    }
    steps.push(
        "setsockopt",
        &Attempt::success(format!("bound to {iface} ({how})")),
    );
    let count = args.num("count", Some(3));
    let mut sent = 0;
    let mut last = None;
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        match sendto_fd(fd.as_raw_fd(), PAYLOAD, 0, &dst) {
            Ok(_) => sent += 1,
            Err(e) => last = Some(e),
        }
    }
    match (sent, last) {
        (0, Some(e)) => refused(extra, "send", Attempt::fail(&format!("sendto {dst}"), &e)),
        _ => Attempt::success(format!(
            "{sent}/{count} datagrams to {dst} bound to {iface}"
        )),
    }
}

/// SO_BINDTODEVICE with `dev` as the name (`how` "name"; "" unbinds) or
/// SO_BINDTOIFINDEX with its index (`how` "index"; `dev` may be a number,
/// "0" unbinds).
fn bind_device(fd: RawFd, how: &str, dev: &str) -> Result<(), Attempt> {
    let r = match how {
        "name" => setsockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes()),
        "index" => {
            let idx = match dev.parse::<u32>() {
                Ok(i) => i,
                Err(_) => iface_index(dev).map_err(|e| Attempt::fail("if_nametoindex", &e))?,
            };
            setsockopt_i32(fd, libc::SOL_SOCKET, 62, idx as i32)
        }
        other => usage(&format!("--how: name or index, not {other:?}")),
    };
    r.map_err(|e| {
        let opt = if how == "name" {
            "SO_BINDTODEVICE"
        } else {
            "SO_BINDTOIFINDEX"
        };
        Attempt::fail(&format!("setsockopt {opt} {dev:?}"), &e)
    })
}

/// What must keep working under the BPF enforcer: a UDP socket bound to
/// `lo` by name, by index, and "unbound" (name "", index 0) each sends
/// one datagram ("lo-name", "lo-index", "unbind-name", "unbind-index") to
/// 127.0.0.1:--port. One step per setsockopt and per send.
pub(crate) fn bindtodevice_lo(args: &Args, steps: &mut Steps) -> Attempt {
    let dst = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.port());
    let plan: [(&str, &[(&str, &str)]); 4] = [
        ("lo-name", &[("name", "lo")]),
        ("lo-index", &[("index", "1")]),
        // A bound socket may only be rebound with CAP_NET_RAW: unbinding
        // is tried on a fresh socket (what a program clearing the option
        // does).
        ("unbind-name", &[("name", "")]),
        ("unbind-index", &[("index", "0")]),
    ];
    let mut all = true;
    for (label, opts) in plan {
        let fd = match udp_socket(&dst.ip()) {
            Ok(fd) => fd,
            Err(e) => return Attempt::fail("socket", &e),
        };
        let mut ok = true;
        for (how, dev) in opts.iter() {
            let r = bind_device(fd.as_raw_fd(), how, dev);
            let a = r
                .err()
                .unwrap_or_else(|| Attempt::success(format!("{how} {dev:?}")));
            ok &= a.ok;
            steps.push(&format!("{label}: setsockopt {how} {dev:?}"), &a);
        }
        if ok {
            let a = match sendto_fd(fd.as_raw_fd(), label.as_bytes(), 0, &dst) {
                Ok(n) => Attempt::success(format!("sent {n} bytes to {dst}")),
                Err(e) => Attempt::fail(&format!("sendto {dst}"), &e),
            };
            ok &= a.ok;
            steps.push(&format!("{label}: send"), &a);
        }
        all &= ok;
    }
    if all {
        Attempt::success("every binding to lo, unbinding and send worked")
    } else {
        Attempt {
            ok: false,
            errno: None,
            detail: "some step failed (see steps)".into(),
        }
    }
}

/// A UDP datagram to `--target:--port` with a capability-gated control
/// message (`--cmsg mark`: SOL_SOCKET SO_MARK; `--cmsg hopopts`: an IPv6
/// hop-by-hop options header, IPV6_HOPOPTS): the kernel wants CAP_NET_ADMIN
/// / CAP_NET_RAW for them.
pub(crate) fn udp_cap_cmsg(args: &Args) -> Attempt {
    let sa = args.target_sa();
    let fd = match udp_socket(&sa.ip()) {
        Ok(fd) => fd,
        Err(e) => return Attempt::fail("socket", &e),
    };
    let (level, ty, data, what): (libc::c_int, libc::c_int, Vec<u8>, &str) = match args.req("cmsg")
    {
        "mark" => (
            libc::SOL_SOCKET,
            libc::SO_MARK,
            0x4e4fu32.to_ne_bytes().to_vec(),
            "SO_MARK",
        ),
        // Next header (ignored), length 0 (8 bytes), PadN of 4.
        "hopopts" => (
            libc::IPPROTO_IPV6,
            libc::IPV6_HOPOPTS,
            vec![0, 0, 1, 4, 0, 0, 0, 0],
            "IPV6_HOPOPTS",
        ),
        other => usage(&format!("--cmsg: mark or hopopts, not {other:?}")),
    };
    match sendmsg_cmsg(fd.as_raw_fd(), Some(&sa), level, ty, &data) {
        Ok(n) => Attempt::success(format!("sendmsg {sa} with {what} cmsg: {n} bytes")),
        Err(e) => Attempt::fail(&format!("sendmsg {sa} with {what} cmsg"), &e),
    }
}
