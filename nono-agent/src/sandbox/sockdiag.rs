//! Destroying every TCP/UDP socket of a sandbox's cgroup (sock_diag
//! `SOCK_DESTROY`), so that nothing the sandbox leaves in the kernel outlives
//! its BPF programs.
//!
//! Why: a socket keeps running after its processes are gone. An orphaned TCP
//! socket retransmits its queued data, FIN_WAIT states keep sending, and a
//! socket passed out by `SCM_RIGHTS` lives in another process. While the
//! sandbox's programs are attached its packets are still judged; once the
//! agent unpins them, nothing is. Teardown and `cleanup` therefore kill the
//! processes, then destroy the sockets found here, and only then unpin.
//!
//! Sockets are found by the kernel itself, with an `INET_DIAG_BC_CGROUP_COND`
//! bytecode filter per cgroup id, so a host with many sockets pays for one
//! dump per family and protocol, not a copy of its whole socket table.
//! Needs `CAP_NET_ADMIN` (the BPF enforcer runs as root).
//!
//! One sweep sees one network namespace (the caller runs it again inside
//! each namespace the sandbox's processes were in, see [`super::netns`]).
//! Not found: TIME_WAIT and request sockets (no cgroup: they only
//! acknowledge what the peer sends, and the peer was an allowed
//! destination). Whatever no sweep reached keeps the programs alive (see
//! `bpffs::released`).

use nix::sys::socket::{
    recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

/// Errors of a socket sweep.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sock_diag netlink socket could not be opened or used.
    #[error("sock_diag netlink socket")]
    Netlink(#[source] nix::Error),
    /// The kernel refused a request.
    #[error("sock_diag {what} failed: {err}")]
    Kernel {
        /// Which request.
        what: &'static str,
        /// The errno the kernel answered.
        err: nix::Error,
    },
    /// The kernel's answer could not be parsed.
    #[error("malformed sock_diag reply: {0}")]
    Malformed(&'static str),
    /// Sockets of the cgroup still exist after destroying them.
    #[error("{0} socket(s) of the sandbox could not be destroyed")]
    Survivors(usize),
}

const NLMSG_HDRLEN: usize = 16;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_CGROUP_COND: u8 = 13;
/// `sizeof(struct inet_diag_sockid)`.
const SOCKID_LEN: usize = 48;
/// `sizeof(struct inet_diag_req_v2)`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `sizeof(struct inet_diag_msg)` up to and including `id`.
const MSG_ID_END: usize = 4 + SOCKID_LEN;
const TCP_CLOSE: u8 = 7;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;
const IPPROTO_UDP: u8 = libc::IPPROTO_UDP as u8;

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Destroyed {
    /// Sockets destroyed.
    pub destroyed: usize,
}

/// One socket found by a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    family: u8,
    protocol: u8,
    state: u8,
    id: [u8; SOCKID_LEN],
}

/// Destroys every TCP and UDP socket (IPv4 and IPv6) whose cgroup is one of
/// `cgroup_ids`, then checks that none is left in a state that can still
/// send. A socket that vanished between dump and destroy is not an error.
pub fn destroy_cgroup_sockets(cgroup_ids: &[u64]) -> Result<Destroyed, Error> {
    let mut out = Destroyed::default();
    if cgroup_ids.is_empty() {
        return Ok(out);
    }
    let nl = open()?;
    let programs: Vec<Vec<u8>> = cgroup_ids
        .chunks(MAX_IDS_PER_PROGRAM)
        .map(cgroup_bytecode)
        .collect();
    // A destroyed socket may have been mid-handshake or had a child queued;
    // a second round catches what the first one made visible.
    for _round in 0..3 {
        let found = dump_all(&nl, &programs)?;
        let live: Vec<Found> = found
            .into_iter()
            .filter(|f| !(f.protocol == IPPROTO_TCP && f.state == TCP_CLOSE))
            .collect();
        if live.is_empty() {
            return Ok(out);
        }
        for f in &live {
            match destroy(&nl, f) {
                Ok(()) => out.destroyed += 1,
                // Gone already (closed, freed) between the dump and now.
                Err(Error::Kernel {
                    err: nix::Error::ENOENT,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let left = dump_all(&nl, &programs)?
        .into_iter()
        .filter(|f| !(f.protocol == IPPROTO_TCP && f.state == TCP_CLOSE))
        .count();
    if left == 0 {
        Ok(out)
    } else {
        Err(Error::Survivors(left))
    }
}

fn open() -> Result<OwnedFd, Error> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(Error::Netlink)
}

/// `INET_DIAG_BC_CGROUP_COND` for each id, OR-ed: a true condition jumps to
/// the end of the program (accept: the remaining length becomes exactly
/// 0), a false one falls through to the next condition; after the last one
/// a false condition jumps 4 bytes past the end (reject).
fn cgroup_bytecode(ids: &[u64]) -> Vec<u8> {
    const OP_LEN: usize = 4 + 8;
    let total = OP_LEN * ids.len();
    let mut bc = Vec::with_capacity(total);
    for (i, id) in ids.iter().enumerate() {
        let remaining = total - i * OP_LEN;
        let yes = remaining as u8;
        let no: u16 = if i + 1 == ids.len() {
            (remaining + 4) as u16
        } else {
            OP_LEN as u16
        };
        bc.push(INET_DIAG_BC_CGROUP_COND);
        bc.push(yes);
        bc.extend_from_slice(&no.to_ne_bytes());
        bc.extend_from_slice(&id.to_ne_bytes());
    }
    bc
}

/// The `yes` jump offset is one byte: at most this many ids fit in one
/// program; more are sent as several programs.
const MAX_IDS_PER_PROGRAM: usize = 20;

fn dump_all(nl: &OwnedFd, programs: &[Vec<u8>]) -> Result<Vec<Found>, Error> {
    let mut out = Vec::new();
    for bc in programs {
        for family in [AF_INET, AF_INET6] {
            for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
                dump(nl, family, protocol, bc, &mut out)?;
            }
        }
    }
    Ok(out)
}

fn request(family: u8, protocol: u8, id: &[u8; SOCKID_LEN]) -> [u8; REQ_LEN] {
    let mut r = [0u8; REQ_LEN];
    r[0] = family;
    r[1] = protocol;
    // idiag_ext = 0, pad = 0; every state.
    r[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    r[8..].copy_from_slice(id);
    r
}

fn message(ty: u16, flags: u16, seq: u32, payload: &[&[u8]]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.iter().map(|p| p.len()).sum::<usize>();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    for p in payload {
        m.extend_from_slice(p);
    }
    m
}

fn dump(
    nl: &OwnedFd,
    family: u8,
    protocol: u8,
    bytecode: &[u8],
    out: &mut Vec<Found>,
) -> Result<(), Error> {
    let req = request(family, protocol, &[0; SOCKID_LEN]);
    let attr_len = (4 + bytecode.len()) as u16;
    let mut attr = Vec::with_capacity(attr_len as usize);
    attr.extend_from_slice(&attr_len.to_ne_bytes());
    attr.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    attr.extend_from_slice(bytecode);
    let msg = message(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        &[&req, &attr],
    );
    send(nl.as_raw_fd(), &msg, MsgFlags::empty()).map_err(Error::Netlink)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(Error::Netlink)?;
        if n == 0 {
            return Err(Error::Malformed("netlink socket closed mid-dump"));
        }
        for (ty, payload) in messages(&buf[..n])? {
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let err = errno_of(payload)?;
                    if err != 0 {
                        return Err(Error::Kernel {
                            what: "dump",
                            err: nix::Error::from_raw(-err),
                        });
                    }
                }
                SOCK_DIAG_BY_FAMILY => {
                    if payload.len() < MSG_ID_END {
                        return Err(Error::Malformed("short inet_diag_msg"));
                    }
                    let mut id = [0u8; SOCKID_LEN];
                    id.copy_from_slice(&payload[4..MSG_ID_END]);
                    out.push(Found {
                        family: payload[0],
                        protocol,
                        state: payload[1],
                        id,
                    });
                }
                _ => {}
            }
        }
    }
}

fn destroy(nl: &OwnedFd, f: &Found) -> Result<(), Error> {
    let req = request(f.family, f.protocol, &f.id);
    let msg = message(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 2, &[&req]);
    send(nl.as_raw_fd(), &msg, MsgFlags::empty()).map_err(Error::Netlink)?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(Error::Netlink)?;
        for (ty, payload) in messages(&buf[..n])? {
            if ty == NLMSG_ERROR {
                let err = errno_of(payload)?;
                return if err == 0 {
                    Ok(())
                } else {
                    Err(Error::Kernel {
                        what: "destroy",
                        err: nix::Error::from_raw(-err),
                    })
                };
            }
        }
    }
}

/// The cookie of the TCP socket whose local end is `local` and remote end
/// `remote`, by an exact `sock_diag` lookup (`None`: no such socket).
///
/// Transparent mode: the proxy's accepted connection has the sandbox's
/// socket at its other end; its cookie keys the record of where that
/// socket really dialled (`ORIGINALS`). An IPv4 pair is looked up as IPv4
/// whatever the socket's family, as the kernel hashes a dual-stack socket
/// connected to a v4-mapped address.
pub fn tcp_cookie(local: SocketAddr, remote: SocketAddr) -> Result<Option<u64>, Error> {
    let (family, src, dst) = match (local, remote) {
        (SocketAddr::V4(l), SocketAddr::V4(r)) => (AF_INET, v4_bytes(l.ip()), v4_bytes(r.ip())),
        (SocketAddr::V6(l), SocketAddr::V6(r)) => {
            match (l.ip().to_ipv4_mapped(), r.ip().to_ipv4_mapped()) {
                (Some(a), Some(b)) => (AF_INET, v4_bytes(&a), v4_bytes(&b)),
                _ => (AF_INET6, l.ip().octets(), r.ip().octets()),
            }
        }
        _ => return Ok(None),
    };
    let mut id = [0u8; SOCKID_LEN];
    id[0..2].copy_from_slice(&local.port().to_be_bytes());
    id[2..4].copy_from_slice(&remote.port().to_be_bytes());
    id[4..20].copy_from_slice(&src);
    id[20..36].copy_from_slice(&dst);
    // idiag_if 0; idiag_cookie INET_DIAG_NOCOOKIE (any).
    id[40..48].copy_from_slice(&[0xff; 8]);
    let nl = open()?;
    let req = request(family, IPPROTO_TCP, &id);
    let msg = message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 3, &[&req]);
    send(nl.as_raw_fd(), &msg, MsgFlags::empty()).map_err(Error::Netlink)?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(Error::Netlink)?;
        if n == 0 {
            return Err(Error::Malformed("netlink socket closed mid-lookup"));
        }
        for (ty, payload) in messages(&buf[..n])? {
            match ty {
                NLMSG_ERROR => {
                    let err = errno_of(payload)?;
                    return match err {
                        0 => Ok(None),
                        e if -e == libc::ENOENT => Ok(None),
                        e => Err(Error::Kernel {
                            what: "lookup",
                            err: nix::Error::from_raw(-e),
                        }),
                    };
                }
                SOCK_DIAG_BY_FAMILY => {
                    let c = payload
                        .get(4 + 40..4 + 48)
                        .ok_or(Error::Malformed("short inet_diag_msg"))?;
                    let lo = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) as u64;
                    let hi = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]) as u64;
                    return Ok(Some(lo | (hi << 32)));
                }
                _ => {}
            }
        }
    }
}

/// An IPv4 address as the first 4 of a sock_diag id's 16 address bytes.
fn v4_bytes(ip: &std::net::Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&ip.octets());
    b
}

/// Splits a netlink datagram into (type, payload) pairs.
fn messages(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, Error> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(Error::Malformed("netlink message length"));
        }
        out.push((ty, &buf[NLMSG_HDRLEN..len]));
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
    }
    Ok(out)
}

fn errno_of(payload: &[u8]) -> Result<i32, Error> {
    let b: [u8; 4] = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(Error::Malformed("short netlink error"))?;
    Ok(i32::from_ne_bytes(b))
}

/// The cgroup id (the inode number of its directory) of `dir` and every
/// cgroup below it, for [`destroy_cgroup_sockets`]; read before the cgroup
/// is removed.
pub fn cgroup_tree_ids(dir: &std::path::Path) -> std::io::Result<Vec<u64>> {
    use std::os::unix::fs::MetadataExt as _;
    let mut ids = vec![std::fs::metadata(dir)?.ino()];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let p = e.path();
                ids.push(e.metadata()?.ino());
                stack.push(p);
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytecode_accepts_on_any_id_and_rejects_after_the_last() {
        let bc = cgroup_bytecode(&[7, 8, 9]);
        assert_eq!(bc.len(), 36);
        // First condition: true jumps the whole program, false to the next.
        assert_eq!(
            (bc[0], bc[1], u16::from_ne_bytes([bc[2], bc[3]])),
            (13, 36, 12)
        );
        assert_eq!(
            (bc[12], bc[13], u16::from_ne_bytes([bc[14], bc[15]])),
            (13, 24, 12)
        );
        // Last: true consumes exactly the rest, false overshoots by 4.
        assert_eq!(
            (bc[24], bc[25], u16::from_ne_bytes([bc[26], bc[27]])),
            (13, 12, 16)
        );
        assert_eq!(u64::from_ne_bytes(bc[28..36].try_into().unwrap()), 9);
    }

    /// The kernel's interpreter (`inet_diag_bc_run`), for cgroup conditions.
    fn run(bc: &[u8], cgroup: u64) -> bool {
        let mut len = bc.len() as i64;
        let mut pc = 0usize;
        while len > 0 {
            let yes = bc[pc + 1] as i64;
            let no = u16::from_ne_bytes([bc[pc + 2], bc[pc + 3]]) as i64;
            let id = u64::from_ne_bytes(bc[pc + 4..pc + 12].try_into().unwrap());
            let step = if id == cgroup { yes } else { no };
            len -= step;
            pc += step as usize;
        }
        len == 0
    }

    #[test]
    fn bytecode_matches_exactly_the_ids() {
        for ids in [vec![5u64], vec![5, 6], (1..=20).collect::<Vec<_>>()] {
            let bc = cgroup_bytecode(&ids);
            for c in 0..25u64 {
                assert_eq!(run(&bc, c), ids.contains(&c), "{ids:?} {c}");
            }
        }
    }

    #[test]
    fn netlink_messages_split() {
        let a = message(3, 0, 1, &[&[1, 2, 3]]);
        let mut buf = a.clone();
        buf.resize(20, 0); // padding to 4
        buf.extend_from_slice(&message(2, 0, 1, &[&0i32.to_ne_bytes()]));
        let m = messages(&buf).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], (3, &[1u8, 2, 3][..]));
        assert_eq!(m[1].0, 2);
        assert!(messages(&[0xff; 16]).is_err());
    }
}
