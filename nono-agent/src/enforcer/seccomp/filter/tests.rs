//! The filter run by a classic-BPF interpreter.

use super::asm::{BPF_ALU_AND_K, BPF_JEQ_K, BPF_JGE_K, BPF_LD_W_ABS, BPF_RET_K};
use super::*;
use nono_common::{decide_socket, decide_socketpair};

fn program(mode: Mode) -> Vec<libc::sock_filter> {
    build(mode).expect("the filter assembles")
}

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
    let p = program(Mode::Notify);
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
        let p = program(mode);
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
        let p = program(mode);
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
        let p = program(mode);
        assert_eq!(run(&p, 102, I386, [0; 6]), errno(libc::EPERM)); // socketcall
        assert_eq!(run(&p, 362, I386, [0; 6]), errno(libc::EPERM)); // connect
        assert_eq!(run(&p, NR32_EXIT_GROUP, I386, [0; 6]), RET_ALLOW);
    }
}

#[test]
fn harden_mode_lets_socket_calls_through() {
    let p = program(Mode::Harden);
    assert_eq!(run(&p, NR_CONNECT, X86, [0; 6]), RET_ALLOW);
    assert_eq!(run(&p, NR_BIND, X86, [0; 6]), RET_ALLOW);
    assert_eq!(run(&p, NR_LISTEN, X86, [0; 6]), RET_ALLOW);
    assert_eq!(run(&p, NR_SENDTO, X86, [3, 0, 0, 0, 0x1000, 16]), RET_ALLOW);
    assert_eq!(run(&p, NR_IO_URING_SETUP, X86, [0; 6]), errno(libc::EPERM));
}

/// Families 0 ..= 63 (the kernel's AF_MAX is 46) and a few out of range.
fn families() -> impl Iterator<Item = u32> {
    (0..=63).chain([255, 0xffff, u32::MAX])
}

/// Every socket type 0 ..= 15 with and without SOCK_NONBLOCK / SOCK_CLOEXEC,
/// and garbage flag bits.
fn types() -> impl Iterator<Item = u32> {
    let flags = [0, 0o4000, 0o2000000, 0o4000 | 0o2000000, 0xffff_fff0];
    (0..=15).flat_map(move |t| flags.into_iter().map(move |f| t | f))
}

/// Protocols 0 ..= 300 (IP, ICMP, TCP, UDP, ICMPv6, SCTP, UDP-Lite, MPTCP,
/// every netlink family) and a few beyond.
fn protocols() -> impl Iterator<Item = u32> {
    (0..=300).chain([0x300, 0xffff, i32::MAX as u32, u32::MAX])
}

/// What the filter should answer for a decision under `mode`.
fn expected(mode: Mode, allow: bool) -> u32 {
    if allow {
        RET_ALLOW
    } else {
        refusal(mode)
    }
}

/// The filter and `decide_socket` / `decide_socketpair` agree on every
/// socket, whatever the upper register halves hold.
#[test]
fn sockets_agree_with_the_shared_table() {
    for mode in [Mode::Notify, Mode::Harden] {
        let p = program(mode);
        for family in families() {
            for ty in types() {
                for proto in protocols() {
                    let hi = 0xdead_0000_0000_0000u64;
                    let args = [
                        hi | family as u64,
                        hi | ty as u64,
                        hi | proto as u64,
                        0,
                        0,
                        0,
                    ];
                    let d = decide_socket(family, ty, proto);
                    let want = expected(mode, d.allow || socket_left_to_bpf(mode, family));
                    assert_eq!(
                        run(&p, NR_SOCKET, X86, args),
                        want,
                        "{mode:?} socket({family}, {ty:#x}, {proto})"
                    );
                    let d = decide_socketpair(family, ty, proto);
                    assert_eq!(
                        run(&p, NR_SOCKETPAIR, X86, args),
                        expected(mode, d.allow),
                        "{mode:?} socketpair({family}, {ty:#x}, {proto})"
                    );
                }
            }
        }
    }
}

/// The filter and `decide_setsockopt` agree on every option of every level
/// up to 300 (and a few far ones), over option names around every entry of
/// the table.
#[test]
fn options_agree_with_the_shared_table() {
    let levels = (0..=300).chain([0xffff, i32::MAX, -1, i32::MIN]);
    let names: Vec<i32> = (-2..=128).chain([255, 256, i32::MAX, i32::MIN]).collect();
    assert!(REFUSED_OPTIONS
        .iter()
        .all(|e| names.contains(&(e.first - 1)) && names.contains(&(e.last + 1))));
    for mode in [Mode::Notify, Mode::Harden] {
        let p = program(mode);
        for level in levels.clone() {
            for &name in &names {
                let hi = 0x1234_0000_0000_0000u64;
                let args = [
                    3,
                    hi | level as u32 as u64,
                    hi | name as u32 as u64,
                    0,
                    4,
                    0,
                ];
                let d = decide_setsockopt(level, name, option_context(mode));
                assert_eq!(
                    run(&p, NR_SETSOCKOPT, X86, args),
                    expected(mode, d.allow),
                    "{mode:?} setsockopt({level}, {name})"
                );
            }
        }
    }
}

/// The filter as it was written by hand before it was generated from the
/// shared tables (issue 10), restated as plain Rust: what each mode answers
/// for every call. The generated program must answer exactly this, so a
/// change to `ALLOWED_SOCKETS` or `REFUSED_OPTIONS` that widens what the
/// sandbox may do fails here, not only in the table's own tests (which the
/// filter follows by construction).
fn hand_written(mode: Mode, nr: u32, arch: u32, a: [u64; 6]) -> u32 {
    let lo = |i: usize| a[i] as u32;
    let eperm = errno(libc::EPERM);
    let (watch, refuse) = match mode {
        Mode::Notify => (RET_USER_NOTIF, RET_USER_NOTIF),
        Mode::Harden => (RET_ALLOW, eperm),
    };
    let allow_if = |ok: bool| if ok { RET_ALLOW } else { refuse };
    if arch != AUDIT_ARCH_X86_64 {
        return if nr == NR32_EXIT || nr == NR32_EXIT_GROUP {
            RET_ALLOW
        } else {
            eperm
        };
    }
    if nr >= X32_SYSCALL_BIT {
        return eperm;
    }
    match nr {
        NR_CONNECT | NR_SENDMSG | NR_SENDMMSG | NR_BIND | NR_LISTEN => watch,
        NR_SENDTO if a[4] == 0 => RET_ALLOW,
        NR_SENDTO => watch,
        NR_SOCKET => {
            let (family, ty, proto) = (lo(0), lo(1) & 0xf, lo(2));
            match family {
                1 => RET_ALLOW,
                16 => allow_if(proto == 0),
                2 | 10 if mode == Mode::Harden => RET_ALLOW,
                2 | 10 => allow_if(
                    (ty == 1 && (proto == 0 || proto == 6))
                        || (ty == 2 && (proto == 0 || proto == 17)),
                ),
                _ => refuse,
            }
        }
        NR_SOCKETPAIR => allow_if(lo(0) == 1),
        NR_SETSOCKOPT => {
            let (level, name) = (lo(1), lo(2));
            let always = match level {
                0 => name == 4 || (35..=48).contains(&name),
                41 => [5, 6, 57, 20, 21, 27, 28].contains(&name) || (42..=48).contains(&name),
                _ => false,
            };
            // Judged by value or backstopped by the egress program under
            // the BPF enforcer; refused outright under the supervisor.
            let without_bpf = match level {
                0 => name == 50,
                41 => name == 50 || name == 76,
                1 => name == 25 || name == 62,
                _ => false,
            };
            allow_if(!(always || (mode == Mode::Notify && without_bpf)))
        }
        NR_IOCTL if [TIOCSTI, TIOCLINUX, TIOCSETD, TIOCCONS].contains(&lo(1)) => eperm,
        NR_IO_URING_SETUP | NR_IO_URING_ENTER | NR_IO_URING_REGISTER => eperm,
        _ => RET_ALLOW,
    }
}

#[test]
fn generated_filter_answers_as_the_hand_written_one() {
    let small: Vec<u64> = (0..=64u64)
        .chain([76, 132, 136, 255, 256, 262, 0x300, 0xffff, 0xffff_ffff])
        .collect();
    let hi = 0xdead_0000_0000_0000u64;
    let mut checked = 0u64;
    for mode in [Mode::Notify, Mode::Harden] {
        let p = program(mode);
        for arch in [AUDIT_ARCH_X86_64, I386, 0xc000_00b7] {
            for nr in (0..=450).chain([X32_SYSCALL_BIT | NR_SOCKET, u32::MAX]) {
                let watched = [NR_SOCKET, NR_SOCKETPAIR, NR_SETSOCKOPT, NR_IOCTL].contains(&nr);
                // sendto's destination pointer, register 4 (all 64 bits).
                let a4s: &[u64] = if nr == NR_SENDTO {
                    &[0, 0x1000, 1 << 32, 0xffff_ffff_0000_0000]
                } else {
                    &[0x1000]
                };
                let grid: &[u64] = if watched && arch == AUDIT_ARCH_X86_64 {
                    &small
                } else {
                    &[0, 2]
                };
                for &a0 in grid {
                    for &a1 in grid {
                        for &a2 in grid {
                            for upper in [0, hi] {
                                for &a4 in a4s {
                                    let a = [a0 | upper, a1 | upper, a2 | upper, 0, a4, 16];
                                    assert_eq!(
                                        run(&p, nr, arch, a),
                                        hand_written(mode, nr, arch, a),
                                        "{mode:?} arch {arch:#x} nr {nr} args {a:x?}"
                                    );
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 1_000_000, "{checked}");
}
