//! The seccomp filter (classic BPF), written out instruction by instruction.
//!
//! Why not a crate: seccompiler has no `SECCOMP_RET_USER_NOTIF` action, and
//! libseccomp compares arguments as 64-bit values, so an `int` argument
//! passed with garbage in the upper half of its register slips past an
//! equality rule, while the kernel only looks at the lower half. Here every
//! `int` argument is judged by its low 32 bits, exactly as the kernel reads
//! it, and the program is small enough to read in full (see `build`) and is
//! executed by an interpreter in the tests.

use nono_common::{consts, decide_setsockopt, OptionContext, REFUSED_OPTIONS};

/// What the filter does with the calls it watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The seccomp enforcer: `connect`, `bind`, `listen`, `sendmsg`,
    /// `sendmmsg` and `sendto` with a destination go to the supervisor, as do
    /// refused `socket`, `socketpair` and `setsockopt` calls (so they are
    /// logged).
    Notify,
    /// Extra hardening under the BPF enforcer: socket families the BPF hooks
    /// do not see are refused outright, as is io_uring (its socket creation
    /// bypasses seccomp); nothing is sent to a supervisor.
    Harden,
}

// seccomp_data layout.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}
const fn off_arg_hi(i: u32) -> u32 {
    16 + 8 * i + 4
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// x86_64 syscall numbers.
pub(crate) const NR_SENDTO: u32 = 44;
pub(crate) const NR_SENDMSG: u32 = 46;
pub(crate) const NR_CONNECT: u32 = 42;
pub(crate) const NR_SENDMMSG: u32 = 307;
pub(crate) const NR_SOCKET: u32 = 41;
pub(crate) const NR_SOCKETPAIR: u32 = 53;
pub(crate) const NR_SETSOCKOPT: u32 = 54;
pub(crate) const NR_BIND: u32 = 49;
const NR_IOCTL: u32 = 16;
pub(crate) const NR_LISTEN: u32 = 50;
const NR_IO_URING_SETUP: u32 = 425;
const NR_IO_URING_ENTER: u32 = 426;
const NR_IO_URING_REGISTER: u32 = 427;
// i386 numbers allowed so that a 32-bit program can at least exit.
const NR32_EXIT: u32 = 1;
const NR32_EXIT_GROUP: u32 = 252;

const AF_NETLINK: u32 = 16;

// Terminal ioctl requests (asm-generic/ioctls.h).
pub(crate) const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;
const TIOCSETD: u32 = 0x5423;
const TIOCCONS: u32 = 0x541d;
const NETLINK_ROUTE: u32 = 0;

pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;
pub(crate) const RET_USER_NOTIF: u32 = 0x7fc0_0000;
pub(crate) const RET_ERRNO: u32 = 0x0005_0000;

fn errno(e: i32) -> u32 {
    RET_ERRNO | (e as u32 & 0xffff)
}

// Classic BPF opcodes.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

/// A jump target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum To {
    Next,
    Label(&'static str),
    /// Over this many instructions (for generated blocks).
    Skip(u8),
}

#[derive(Clone, Debug)]
enum Insn {
    Ld(u32),
    And(u32),
    Jeq(u32, To, To),
    Jge(u32, To, To),
    Ret(u32),
    Label(&'static str),
}

/// Turns symbolic instructions into `sock_filter`s.
fn assemble(prog: &[Insn]) -> Result<Vec<libc::sock_filter>, String> {
    // Index of each real instruction and each label.
    let mut labels = std::collections::HashMap::new();
    let mut n = 0usize;
    for i in prog {
        match i {
            Insn::Label(l) => {
                if labels.insert(*l, n).is_some() {
                    return Err(format!("duplicate label {l}"));
                }
            }
            _ => n += 1,
        }
    }
    let mut out = Vec::with_capacity(n);
    let offset = |from: usize, to: To| -> Result<u8, String> {
        match to {
            To::Next => Ok(0),
            To::Skip(n) => Ok(n),
            To::Label(l) => {
                let target = *labels.get(l).ok_or_else(|| format!("unknown label {l}"))?;
                let off = target
                    .checked_sub(from + 1)
                    .ok_or_else(|| format!("backward jump to {l}"))?;
                u8::try_from(off).map_err(|_| format!("jump to {l} too far"))
            }
        }
    };
    for i in prog {
        let pc = out.len();
        let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        match *i {
            Insn::Label(_) => continue,
            Insn::Ld(off) => out.push(f(BPF_LD_W_ABS, 0, 0, off)),
            Insn::And(k) => out.push(f(BPF_ALU_AND_K, 0, 0, k)),
            Insn::Jeq(k, t, e) => out.push(f(BPF_JEQ_K, offset(pc, t)?, offset(pc, e)?, k)),
            Insn::Jge(k, t, e) => out.push(f(BPF_JGE_K, offset(pc, t)?, offset(pc, e)?, k)),
            Insn::Ret(k) => out.push(f(BPF_RET_K, 0, 0, k)),
        }
    }
    Ok(out)
}

/// The `setsockopt` checks, generated from the shared table
/// (`nono_common::REFUSED_OPTIONS`) so this filter and the BPF setsockopt
/// program refuse the same options. This filter cannot read the option's
/// value, so under the supervisor every entry is refused, device binding
/// even to `lo` included; under the BPF enforcer (`Harden`) the entries the
/// BPF side judges by value or backstops with its egress program are left to
/// it.
fn setsockopt_section(mode: Mode) -> Vec<Insn> {
    use Insn::*;
    use To::{Label as L, Next};
    let ctx = match mode {
        Mode::Notify => OptionContext {
            binds_loopback_device: false,
            packet_filter: false,
        },
        Mode::Harden => OptionContext {
            binds_loopback_device: true,
            packet_filter: true,
        },
    };
    let mut levels: Vec<i32> = Vec::new();
    for e in REFUSED_OPTIONS {
        if !levels.contains(&e.level) {
            levels.push(e.level);
        }
    }
    let mut out = vec![Ld(off_arg_lo(1))];
    for level in levels {
        let mut block = vec![Ld(off_arg_lo(2))];
        for e in REFUSED_OPTIONS.iter().filter(|e| e.level == level) {
            if decide_setsockopt(e.level, e.first, ctx).allow {
                continue;
            }
            if e.first == e.last {
                block.push(Jeq(e.first as u32, L("refuse"), Next));
            } else {
                // first <= optname <= last
                block.push(Jge(e.first as u32, Next, To::Skip(1)));
                block.push(Jge(e.last as u32 + 1, Next, L("refuse")));
            }
        }
        // Option names were loaded over the level: a level's block ends
        // the decision.
        block.push(Ret(RET_ALLOW));
        let len = u8::try_from(block.len()).unwrap_or(u8::MAX);
        out.push(Jeq(level as u32, Next, To::Skip(len)));
        out.extend(block);
    }
    out.push(Ret(RET_ALLOW));
    out
}

/// The filter program for `mode`.
pub fn build(mode: Mode) -> Vec<libc::sock_filter> {
    use Insn::*;
    use To::{Label as L, Next};
    let watch = match mode {
        Mode::Notify => RET_USER_NOTIF,
        Mode::Harden => RET_ALLOW,
    };
    let refuse = match mode {
        Mode::Notify => RET_USER_NOTIF,
        Mode::Harden => errno(libc::EPERM),
    };
    // Under the BPF enforcer, inet sockets are judged (and logged) by the
    // cgroup sock_create program.
    let inet = match mode {
        Mode::Notify => "socket_type",
        Mode::Harden => "allow",
    };
    let prog = vec![
        Ld(OFF_ARCH),
        Jeq(AUDIT_ARCH_X86_64, Next, L("foreign_arch")),
        Ld(OFF_NR),
        Jge(X32_SYSCALL_BIT, L("eperm"), Next),
        Jeq(NR_CONNECT, L("watch"), Next),
        Jeq(NR_SENDMSG, L("watch"), Next),
        Jeq(NR_SENDMMSG, L("watch"), Next),
        Jeq(NR_SENDTO, L("sendto"), Next),
        Jeq(NR_SOCKET, L("socket"), Next),
        Jeq(NR_SOCKETPAIR, L("socketpair"), Next),
        Jeq(NR_SETSOCKOPT, L("setsockopt"), Next),
        Jeq(NR_IOCTL, L("ioctl"), Next),
        Jeq(NR_BIND, L("watch"), Next),
        Jeq(NR_LISTEN, L("watch"), Next),
        Jeq(NR_IO_URING_SETUP, L("io_uring"), Next),
        Jeq(NR_IO_URING_ENTER, L("io_uring"), Next),
        Jeq(NR_IO_URING_REGISTER, L("io_uring"), Next),
        Ret(RET_ALLOW),
        // sendto(fd, buf, len, flags, dest_addr, addrlen): without a
        // destination (a register, not memory, so it cannot change after
        // the check) the packet goes to the connected peer.
        Label("sendto"),
        Ld(off_arg_lo(4)),
        Jeq(0, Next, L("watch")),
        Ld(off_arg_hi(4)),
        Jeq(0, L("allow"), L("watch")),
        // socket(domain, type, protocol)
        Label("socket"),
        Ld(off_arg_lo(0)),
        Jeq(consts::AF_UNIX, L("allow"), Next),
        Jeq(AF_NETLINK, Next, L("socket_inet")),
        Ld(off_arg_lo(2)),
        Jeq(NETLINK_ROUTE, L("allow"), L("refuse")),
        Label("socket_inet"),
        Jeq(consts::AF_INET, L(inet), Next),
        Jeq(consts::AF_INET6, L(inet), L("refuse")),
        Label("socket_type"),
        Ld(off_arg_lo(1)),
        And(consts::SOCK_TYPE_MASK),
        Jeq(consts::SOCK_STREAM, Next, L("socket_dgram")),
        Ld(off_arg_lo(2)),
        Jeq(consts::IPPROTO_IP, L("allow"), Next),
        Jeq(consts::IPPROTO_TCP, L("allow"), L("refuse")),
        Label("socket_dgram"),
        Jeq(consts::SOCK_DGRAM, Next, L("refuse")),
        Ld(off_arg_lo(2)),
        Jeq(consts::IPPROTO_IP, L("allow"), Next),
        Jeq(consts::IPPROTO_UDP, L("allow"), L("refuse")),
        // socketpair(domain, ...): local only.
        Label("socketpair"),
        Ld(off_arg_lo(0)),
        Jeq(consts::AF_UNIX, L("allow"), L("refuse")),
        // ioctl(fd, request, ...): the terminal requests that act on the
        // caller's terminal beyond the sandbox's own output: typing into its
        // input queue (TIOCSTI; `dev.tty.legacy_tiocsti` is 1 on many
        // hosts), pasting a console selection (TIOCLINUX), changing the
        // line discipline (TIOCSETD), redirecting the console (TIOCCONS).
        // `request` is an unsigned int: its low half is what counts.
        Label("ioctl"),
        Ld(off_arg_lo(1)),
        Jeq(TIOCSTI, L("eperm"), Next),
        Jeq(TIOCLINUX, L("eperm"), Next),
        Jeq(TIOCSETD, L("eperm"), Next),
        Jeq(TIOCCONS, L("eperm"), L("allow")),
        // setsockopt(fd, level, optname, ...): nono_common::REFUSED_OPTIONS.
        Label("setsockopt"),
    ];
    let mut prog = prog;
    prog.extend(setsockopt_section(mode));
    prog.extend(vec![
        // i386 (int 0x80) and anything else not x86_64: only exit.
        Label("foreign_arch"),
        Ld(OFF_NR),
        Jeq(NR32_EXIT, L("allow"), Next),
        Jeq(NR32_EXIT_GROUP, L("allow"), L("eperm")),
        Label("io_uring"),
        // io_uring operations are performed by kernel workers that seccomp
        // never sees.
        // Refused under both enforcers: io_uring can also create sockets
        // (IORING_OP_SOCKET) of families this filter refuses.
        Ret(errno(libc::EPERM)),
        Label("eperm"),
        Ret(errno(libc::EPERM)),
        Label("watch"),
        Ret(watch),
        Label("refuse"),
        Ret(refuse),
        Label("allow"),
        Ret(RET_ALLOW),
    ]);
    // The program is fixed: a failure here is a bug caught by the tests.
    assemble(&prog).unwrap_or_else(|e| panic!("seccomp filter does not assemble: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the opcodes `build` uses.
    fn run(prog: &[libc::sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                    pc += 1;
                }
                BPF_ALU_AND_K => {
                    acc &= i.k;
                    pc += 1;
                }
                BPF_JEQ_K => pc += 1 + if acc == i.k { i.jt } else { i.jf } as usize,
                BPF_JGE_K => pc += 1 + if acc >= i.k { i.jt } else { i.jf } as usize,
                BPF_RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    const X86: u32 = AUDIT_ARCH_X86_64;
    const I386: u32 = 0x4000_0003;

    #[test]
    fn notify_mode() {
        let p = build(Mode::Notify);
        assert!(p.len() < 150);
        let n = |nr, args| run(&p, nr, X86, args);
        assert_eq!(n(NR_CONNECT, [3, 0x1000, 16, 0, 0, 0]), RET_USER_NOTIF);
        assert_eq!(n(NR_SENDMSG, [3, 0x1000, 0, 0, 0, 0]), RET_USER_NOTIF);
        assert_eq!(n(NR_SENDMMSG, [3, 0x1000, 2, 0, 0, 0]), RET_USER_NOTIF);
        assert_eq!(n(NR_SENDTO, [3, 0x1000, 5, 0, 0, 0]), RET_ALLOW);
        assert_eq!(
            n(NR_SENDTO, [3, 0x1000, 5, 0, 0x7ffd_0000, 16]),
            RET_USER_NOTIF
        );
        assert_eq!(n(NR_SENDTO, [3, 0x1000, 5, 0, 1 << 32, 16]), RET_USER_NOTIF);
        assert_eq!(n(0, [0; 6]), RET_ALLOW); // read
        assert_eq!(n(NR_IO_URING_SETUP, [0; 6]), errno(libc::EPERM));
        assert_eq!(n(NR_CONNECT | X32_SYSCALL_BIT, [0; 6]), errno(libc::EPERM));
        assert_eq!(n(NR_BIND, [3, 0x1000, 16, 0, 0, 0]), RET_USER_NOTIF);
        assert_eq!(n(NR_LISTEN, [3, 0, 0, 0, 0, 0]), RET_USER_NOTIF);
    }

    #[test]
    fn sockets() {
        for mode in [Mode::Notify, Mode::Harden] {
            let p = build(mode);
            let refused = if mode == Mode::Notify {
                RET_USER_NOTIF
            } else {
                errno(libc::EPERM)
            };
            let s = |d: u64, t: u64, pr: u64| run(&p, NR_SOCKET, X86, [d, t, pr, 0, 0, 0]);
            assert_eq!(s(1, 1, 0), RET_ALLOW);
            assert_eq!(s(1, 5, 0), RET_ALLOW);
            assert_eq!(s(2, 1, 0), RET_ALLOW);
            assert_eq!(s(10, 1 | 0o4000 | 0o2000000, 6), RET_ALLOW);
            assert_eq!(s(2, 2, 17), RET_ALLOW);
            assert_eq!(s(2, 2, 0), RET_ALLOW);
            assert_eq!(s(16, 3, 0), RET_ALLOW);
            // Upper register halves are ignored, as the kernel ignores them.
            assert_eq!(s(0xdead_0000_0000_0002, 1, 0), RET_ALLOW);
            assert_eq!(s(0xdead_0000_0000_0028, 1, 0), refused); // AF_VSOCK
            let inet_refused = if mode == Mode::Notify {
                refused
            } else {
                RET_ALLOW
            };
            assert_eq!(s(2, 3, 1), inet_refused); // raw
            assert_eq!(s(2, 2, 1), inet_refused); // ping
            assert_eq!(s(2, 1, 262), inet_refused); // MPTCP
            assert_eq!(s(2, 1, 132), inet_refused); // SCTP
            assert_eq!(s(17, 3, 0x300), refused); // AF_PACKET
            assert_eq!(s(40, 1, 0), refused); // AF_VSOCK
            assert_eq!(s(16, 3, 9), refused); // NETLINK_AUDIT
            assert_eq!(run(&p, NR_SOCKETPAIR, X86, [1, 1, 0, 0, 0, 0]), RET_ALLOW);
            assert_eq!(run(&p, NR_SOCKETPAIR, X86, [2, 1, 0, 0, 0, 0]), refused);
            let sso = |l: u64, o: u64| run(&p, NR_SETSOCKOPT, X86, [3, l, o, 0, 4, 0]);
            assert_eq!(sso(0, 4), refused);
            assert_eq!(sso(41, 57), refused);
            assert_eq!(sso(41, 5), refused);
            assert_eq!(sso(41, 6), refused);
            // Left to the BPF egress program under the BPF enforcer.
            let off_device = if mode == Mode::Notify {
                refused
            } else {
                RET_ALLOW
            };
            assert_eq!(sso(0, 50), off_device); // IP_UNICAST_IF
            assert_eq!(sso(41, 76), off_device); // IPV6_UNICAST_IF
            assert_eq!(sso(41, 50), off_device); // IPV6_PKTINFO (sticky)
            assert_eq!(sso(1, 25), off_device); // SO_BINDTODEVICE (BPF reads the name)
            assert_eq!(sso(1, 62), off_device); // SO_BINDTOIFINDEX
            assert_eq!(sso(0, 8), RET_ALLOW); // IP_PKTINFO (receive flag)
            for o in 35..=48 {
                assert_eq!(sso(0, o), refused, "SOL_IP {o}"); // memberships
                assert_eq!(sso(0x1234_0000_0000_0000, o), refused, "upper half ignored");
            }
            for o in [20, 21, 27, 28, 42, 43, 44, 45, 46, 47, 48] {
                assert_eq!(sso(41, o), refused, "SOL_IPV6 {o}");
            }
            for (l, o) in [
                (0, 34),
                (0, 49),
                (41, 19),
                (41, 26),
                (41, 49),
                (1, 24),
                (1, 26),
            ] {
                assert_eq!(sso(l, o), RET_ALLOW, "{l} {o}");
            }
            assert_eq!(sso(0, 1), RET_ALLOW);
            assert_eq!(sso(1, 4), RET_ALLOW);
            assert_eq!(sso(41, 67), RET_ALLOW);
        }
    }

    #[test]
    fn terminal_injection_is_refused_in_both_modes() {
        for mode in [Mode::Notify, Mode::Harden] {
            let p = build(mode);
            let io = |req: u64| run(&p, NR_IOCTL, X86, [0, req, 0x1000, 0, 0, 0]);
            for req in [0x5412, 0x541c, 0x5423, 0x541d, 0xffff_ffff_0000_5412] {
                assert_eq!(io(req), errno(libc::EPERM), "{req:#x}");
            }
            for req in [
                0x5401, 0x5402, 0x5413, 0x5414, 0x540f, 0x5410, 0x541b, 0x5421,
            ] {
                // TCGETS, TCSETS, TIOCGWINSZ, TIOCSWINSZ, TIOCGPGRP,
                // TIOCSPGRP, FIONREAD, FIONBIO
                assert_eq!(io(req), RET_ALLOW, "{req:#x}");
            }
        }
    }

    #[test]
    fn foreign_arch_can_only_exit() {
        for mode in [Mode::Notify, Mode::Harden] {
            let p = build(mode);
            assert_eq!(run(&p, 102, I386, [0; 6]), errno(libc::EPERM)); // socketcall
            assert_eq!(run(&p, 362, I386, [0; 6]), errno(libc::EPERM)); // connect
            assert_eq!(run(&p, NR32_EXIT_GROUP, I386, [0; 6]), RET_ALLOW);
        }
    }

    #[test]
    fn harden_mode_lets_socket_calls_through() {
        let p = build(Mode::Harden);
        assert_eq!(run(&p, NR_CONNECT, X86, [0; 6]), RET_ALLOW);
        assert_eq!(run(&p, NR_BIND, X86, [0; 6]), RET_ALLOW);
        assert_eq!(run(&p, NR_LISTEN, X86, [0; 6]), RET_ALLOW);
        assert_eq!(run(&p, NR_SENDTO, X86, [3, 0, 0, 0, 0x1000, 16]), RET_ALLOW);
        assert_eq!(run(&p, NR_IO_URING_SETUP, X86, [0; 6]), errno(libc::EPERM));
    }
}
