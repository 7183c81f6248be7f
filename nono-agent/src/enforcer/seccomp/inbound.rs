//! The seccomp enforcer's inbound filter: a classic BPF socket filter
//! (`SO_ATTACH_FILTER`), locked with `SO_LOCK_FILTER`, that the supervisor
//! puts on every inet socket it sees before that socket is bound, listens,
//! connects or sends.
//!
//! Why: without a cgroup there is no ingress program, so a sandbox listening
//! on the wildcard address would accept connections from any host and write
//! to them, and a listener with a full accept queue would answer SYNs with
//! SYN-cookie SYN-ACKs whose MSS the sandbox chose. A socket filter runs in
//! the same place as the cgroup ingress program (`sk_filter`, before TCP's
//! listener code), so a dropped SYN is never answered. It keeps what arrives
//! on the loopback device or from a proxy endpoint, as
//! [`nono_common::decide_ingress`] says. Accepted sockets inherit their
//! listener's filter and its lock; a locked filter cannot be removed or
//! replaced by the sandbox (`EPERM`).

use nono_common::{Policy, MAX_PROXY_ENDPOINTS};
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const LD_H_IND: u16 = 0x48;
const LDX_B_MSH: u16 = 0xb1;
const ALU_RSH_K: u16 = 0x74;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

/// `SKF_AD_OFF + SKF_AD_IFINDEX`: the receiving device's index.
const AD_IFINDEX: u32 = (-0x1000i32 + 8) as u32;
/// `SKF_NET_OFF`: offsets relative to the network header.
const NET: i32 = -0x10_0000;
const fn net(off: i32) -> u32 {
    (NET + off) as u32
}

const KEEP: u32 = u32::MAX;
const DROP: u32 = 0;

/// `SO_LOCK_FILTER` (not in every libc).
const SO_LOCK_FILTER: i32 = 44;
/// `SO_GET_FILTER` (= `SO_ATTACH_FILTER`).
const SO_GET_FILTER: i32 = 26;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter for `policy`: keep packets received on the loopback device
/// (ifindex 1 in every network namespace) or whose source address and port
/// are a proxy endpoint; drop everything else. A loopback endpoint never
/// vouches for a packet off the loopback device (as in `decide_ingress`).
///
/// In audit mode (`policy.audit`) the filter keeps everything: the replies
/// of destinations audit lets the sandbox reach arrive off the loopback
/// device.
pub fn program(policy: &Policy) -> Vec<libc::sock_filter> {
    if policy.audit == nono_common::AUDIT_ON {
        return vec![insn(RET_K, 0, 0, KEEP)];
    }
    let proxies: Vec<_> = policy.proxies[..(policy.n_proxies as usize).min(MAX_PROXY_ENDPOINTS)]
        .iter()
        .filter(|p| !nono_common::is_loopback(&p.addr))
        .collect();
    let v4: Vec<_> = proxies
        .iter()
        .filter(|p| p.addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])
        .collect();
    let v6: Vec<_> = proxies
        .iter()
        .filter(|p| p.addr[..12] != [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])
        .collect();
    // Every endpoint test ends in a jump to `keep`, the last instruction.
    // Block: IPv4 endpoints (only reached for version 4 packets).
    let mut b4 = Vec::new();
    for p in &v4 {
        let addr = u32::from_be_bytes([p.addr[12], p.addr[13], p.addr[14], p.addr[15]]);
        // ld src; jeq addr ? next : skip 3; ldx 4*ihl; ldh [x + net 0] (sport); jeq port ? keep : next
        b4.push(vec![
            insn(LD_W_ABS, 0, 0, net(12)),
            insn(JEQ_K, 0, 3, addr),
            insn(LDX_B_MSH, 0, 0, net(0)),
            insn(LD_H_IND, 0, 0, net(0)),
            insn(JEQ_K, 0xff, 0, u32::from(p.port)), // jt patched to keep
        ]);
    }
    let mut b6 = Vec::new();
    for p in &v6 {
        let w =
            |i: usize| u32::from_be_bytes([p.addr[i], p.addr[i + 1], p.addr[i + 2], p.addr[i + 3]]);
        // Four address words (each mismatch skips the rest of this
        // endpoint), then the source port right after the fixed header.
        b6.push(vec![
            insn(LD_W_ABS, 0, 0, net(8)),
            insn(JEQ_K, 0, 8, w(0)),
            insn(LD_W_ABS, 0, 0, net(12)),
            insn(JEQ_K, 0, 6, w(4)),
            insn(LD_W_ABS, 0, 0, net(16)),
            insn(JEQ_K, 0, 4, w(8)),
            insn(LD_W_ABS, 0, 0, net(20)),
            insn(JEQ_K, 0, 2, w(12)),
            insn(LD_H_ABS, 0, 0, net(40)),
            insn(JEQ_K, 0xff, 0, u32::from(p.port)), // jt patched to keep
        ]);
    }
    let n4: usize = b4.iter().map(Vec::len).sum();
    let n6: usize = b6.iter().map(Vec::len).sum();
    // Layout:
    //   0 ld ifindex
    //   1 jeq 1 ? keep : next
    //   2 ldb [net 0]; 3 rsh 4; 4 jeq 4 ? next : (skip v4 block + its drop)
    //   v4 block, ret drop
    //   v6 block, ret drop   (a non-4 version reaches v6 tests; a non-IP
    //                         one matches no endpoint)
    //   ret keep
    let total = 5 + n4 + 1 + n6 + 1 + 1;
    let keep_at = total - 1;
    let mut out = Vec::with_capacity(total);
    out.push(insn(LD_W_ABS, 0, 0, AD_IFINDEX));
    out.push(insn(JEQ_K, jump(1, keep_at), 0, 1));
    out.push(insn(LD_B_ABS, 0, 0, net(0)));
    out.push(insn(ALU_RSH_K, 0, 0, 4));
    out.push(insn(JEQ_K, 0, jump(4, 5 + n4 + 1), 4));
    for block in b4
        .into_iter()
        .chain(std::iter::once(vec![insn(RET_K, 0, 0, DROP)]))
    {
        push_block(&mut out, block, keep_at);
    }
    for block in b6
        .into_iter()
        .chain(std::iter::once(vec![insn(RET_K, 0, 0, DROP)]))
    {
        push_block(&mut out, block, keep_at);
    }
    out.push(insn(RET_K, 0, 0, KEEP));
    out
}

/// The offset of a jump at `from` to `to`. Programs here are far below 256
/// instructions (16 endpoints of at most 10), so it always fits.
fn jump(from: usize, to: usize) -> u8 {
    u8::try_from(to - from - 1).unwrap_or(u8::MAX)
}

fn push_block(out: &mut Vec<libc::sock_filter>, block: Vec<libc::sock_filter>, keep_at: usize) {
    for mut i in block {
        if i.code == JEQ_K && i.jt == 0xff {
            i.jt = jump(out.len(), keep_at);
        }
        out.push(i);
    }
}

/// The inbound filter and the socket types this agent can put it on.
#[derive(Debug, Clone)]
pub struct Inbound {
    prog: Vec<libc::sock_filter>,
    stream: bool,
    dgram: bool,
}

impl Inbound {
    /// The filter to put on a socket of type `ty` (`SO_TYPE`), or None when
    /// this agent cannot attach one to that type (then the supervisor binds
    /// such sockets to loopback instead).
    pub fn for_type(&self, ty: u32) -> Option<&[libc::sock_filter]> {
        let ok = match ty as i32 {
            libc::SOCK_STREAM => self.stream,
            libc::SOCK_DGRAM => self.dgram,
            _ => false,
        };
        ok.then_some(self.prog.as_slice())
    }
}

/// The filter for `policy`, and whether this kernel lets the agent attach
/// it to TCP and to UDP sockets (each tried on a throwaway socket): the
/// kernels here refuse `SO_ATTACH_FILTER` on a TCP socket without
/// `CAP_NET_ADMIN`, which an unprivileged agent lacks, and allow it on UDP.
pub fn available(policy: &Policy) -> Inbound {
    let prog = program(policy);
    let works = |ty: i32| {
        use std::os::fd::{AsFd as _, FromRawFd as _, OwnedFd};
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return false;
        }
        // SAFETY: a new descriptor nobody else owns.
        let probe = unsafe { OwnedFd::from_raw_fd(fd) };
        ensure(probe.as_fd(), &prog).is_ok()
    };
    let stream = works(libc::SOCK_STREAM);
    let dgram = works(libc::SOCK_DGRAM);
    Inbound {
        prog,
        stream,
        dgram,
    }
}

/// Puts `prog` on the socket and locks it, unless it is already there and
/// locked. Fails (the caller refuses the operation) if the socket carries a
/// locked filter that is not ours: the sandbox locked its own first.
pub fn ensure(sock: BorrowedFd<'_>, prog: &[libc::sock_filter]) -> io::Result<()> {
    if locked(sock)? {
        return if current(sock, prog.len())?.as_deref() == Some(prog) {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EPERM))
        };
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `prog`, valid for the call; the kernel copies
    // the program.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: an int option on a valid fd.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_LOCK_FILTER,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn locked(sock: BorrowedFd<'_>) -> io::Result<bool> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: int out-parameter of the right size.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_LOCK_FILTER,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v != 0)
}

/// The socket's classic filter, if it has one of `len` instructions.
fn current(sock: BorrowedFd<'_>, len: usize) -> io::Result<Option<Vec<libc::sock_filter>>> {
    let mut buf = vec![insn(0, 0, 0, 0); len];
    // SO_GET_FILTER takes the length in instructions, not bytes.
    let mut n = len as libc::socklen_t;
    // SAFETY: `buf` has room for `len` instructions, which is what `n` says.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            buf.as_mut_ptr().cast(),
            &mut n,
        )
    };
    if r != 0 {
        // EINVAL: a longer filter than ours.
        return Ok(None);
    }
    if n as usize != len {
        return Ok(None);
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nono_common::{Dest, Endpoint};

    /// A classic-BPF interpreter for the opcodes above, over a packet given
    /// as its network header onwards and its receiving ifindex.
    fn run(prog: &[libc::sock_filter], ifindex: u32, pkt: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let at = |k: u32, add: u32| -> usize { (k as i32 - NET) as usize + add as usize };
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS if i.k == AD_IFINDEX => a = ifindex,
                LD_W_ABS => {
                    let o = at(i.k, 0);
                    a = u32::from_be_bytes(pkt[o..o + 4].try_into().unwrap());
                }
                LD_H_ABS => {
                    let o = at(i.k, 0);
                    a = u16::from_be_bytes(pkt[o..o + 2].try_into().unwrap()).into();
                }
                LD_H_IND => {
                    let o = at(i.k, x);
                    a = u16::from_be_bytes(pkt[o..o + 2].try_into().unwrap()).into();
                }
                LD_B_ABS => a = pkt[at(i.k, 0)].into(),
                LDX_B_MSH => x = u32::from(pkt[at(i.k, 0)] & 0xf) * 4,
                ALU_RSH_K => a >>= i.k,
                JEQ_K => pc += if a == i.k { i.jt } else { i.jf } as usize,
                RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    fn v4_packet(src: [u8; 4], sport: u16, ihl_words: u8) -> Vec<u8> {
        let mut p = vec![0u8; ihl_words as usize * 4 + 8];
        p[0] = 0x40 | ihl_words;
        p[12..16].copy_from_slice(&src);
        let l4 = ihl_words as usize * 4;
        p[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        p
    }

    fn v6_packet(src: [u8; 16], sport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[8..24].copy_from_slice(&src);
        p[40..42].copy_from_slice(&sport.to_be_bytes());
        p
    }

    fn policy(eps: &[Dest]) -> Policy {
        let mut p = Policy::DENY_ALL;
        for (i, d) in eps.iter().enumerate() {
            p.proxies[i] = Endpoint::from_dest(*d);
        }
        p.n_proxies = eps.len() as u32;
        p
    }

    #[test]
    fn only_loopback_without_endpoints() {
        let prog = program(&Policy::DENY_ALL);
        assert_eq!(run(&prog, 1, &v4_packet([198, 51, 100, 2], 80, 5)), KEEP);
        assert_eq!(run(&prog, 2, &v4_packet([198, 51, 100, 2], 80, 5)), DROP);
        assert_eq!(run(&prog, 2, &v4_packet([127, 0, 0, 1], 80, 5)), DROP);
        let six = v6_packet(std::net::Ipv6Addr::LOCALHOST.octets(), 80);
        assert_eq!(run(&prog, 1, &six), KEEP);
        assert_eq!(run(&prog, 3, &six), DROP);
    }

    #[test]
    fn proxy_endpoints_by_address_and_port() {
        let v6 = "2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let prog = program(&policy(&[
            Dest::v4([203, 0, 113, 2], 3128),
            Dest::v6(v6, 8080),
            Dest::v4([203, 0, 113, 9], 443),
        ]));
        for ihl in [5, 6, 15] {
            assert_eq!(run(&prog, 2, &v4_packet([203, 0, 113, 2], 3128, ihl)), KEEP);
            assert_eq!(run(&prog, 2, &v4_packet([203, 0, 113, 2], 3129, ihl)), DROP);
            assert_eq!(run(&prog, 2, &v4_packet([203, 0, 113, 9], 443, ihl)), KEEP);
            assert_eq!(run(&prog, 2, &v4_packet([203, 0, 113, 9], 3128, ihl)), DROP);
            assert_eq!(run(&prog, 2, &v4_packet([203, 0, 113, 3], 3128, ihl)), DROP);
        }
        assert_eq!(run(&prog, 2, &v6_packet(v6, 8080)), KEEP);
        assert_eq!(run(&prog, 2, &v6_packet(v6, 8081)), DROP);
        let mut other = v6;
        other[15] ^= 1;
        assert_eq!(run(&prog, 2, &v6_packet(other, 8080)), DROP);
        for word in 0..4 {
            let mut near = v6;
            near[word * 4] ^= 0x80;
            assert_eq!(run(&prog, 2, &v6_packet(near, 8080)), DROP, "word {word}");
        }
    }

    /// The filter keeps exactly what `decide_ingress` allows, over
    /// packets from each endpoint, its neighbours (port and every address
    /// byte off by one bit), loopback and unrelated hosts, on the loopback
    /// device and off it, with IPv4 options of every length. Endpoints with
    /// port 0 (which `decide_ingress` never matches, and no proxy listens
    /// on) and v4-mapped sources in IPv6 headers (which the filter does not
    /// match against IPv4 endpoints) are left out.
    #[test]
    fn agrees_with_decide_ingress() {
        let v6 = |last: u8| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            a[15] = last;
            a
        };
        let endpoints = [
            Dest::v4([203, 0, 113, 2], 3128),
            Dest::v6(v6(5), 8080),
            Dest::v4([127, 0, 0, 1], 9000),
            Dest::v6(std::net::Ipv6Addr::LOCALHOST.octets(), 9001),
            Dest::v4([198, 51, 100, 255], 65535),
        ];
        for n in 0..=endpoints.len() {
            let pol = policy(&endpoints[..n]);
            let prog = program(&pol);
            let mut sources: Vec<Dest> = vec![
                Dest::v4([198, 51, 100, 7], 3128),
                Dest::v6(v6(9), 8080),
                Dest::v4([0; 4], 0),
            ];
            for e in &endpoints {
                for port in [e.port, e.port.wrapping_add(1), e.port.wrapping_sub(1), 0] {
                    sources.push(Dest { port, ..*e });
                    for byte in 0..16 {
                        let mut near = *e;
                        near.addr[byte] ^= 1;
                        near.port = port;
                        if near.is_v4() == e.is_v4() {
                            sources.push(near);
                        }
                    }
                }
            }
            for src in sources {
                for ifindex in [1, 2, 7] {
                    let want = nono_common::decide_ingress(&pol, &src, ifindex == 1).allow;
                    let packets: Vec<Vec<u8>> = if src.is_v4() {
                        let a = [src.addr[12], src.addr[13], src.addr[14], src.addr[15]];
                        (5..=15).map(|ihl| v4_packet(a, src.port, ihl)).collect()
                    } else {
                        vec![v6_packet(src.addr, src.port)]
                    };
                    for pkt in packets {
                        assert_eq!(
                            run(&prog, ifindex, &pkt) == KEEP,
                            want,
                            "{n} endpoints, {src:?} on ifindex {ifindex}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn sixteen_endpoints_fit() {
        let eps: Vec<Dest> = (0..16)
            .map(|i| {
                if i % 2 == 0 {
                    Dest::v4([203, 0, 113, i as u8], 1000 + i)
                } else {
                    let mut a = [0u8; 16];
                    a[0] = 0x20;
                    a[1] = 0x01;
                    a[15] = i as u8;
                    Dest::v6(a, 1000 + i)
                }
            })
            .collect();
        let prog = program(&policy(&eps));
        assert!(prog.len() < 256);
        assert_eq!(run(&prog, 2, &v4_packet([203, 0, 113, 14], 1014, 5)), KEEP);
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        a[15] = 15;
        assert_eq!(run(&prog, 2, &v6_packet(a, 1015)), KEEP);
        assert_eq!(run(&prog, 2, &v6_packet(a, 1014)), DROP);
    }
}
