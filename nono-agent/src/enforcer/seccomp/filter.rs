//! The seccomp filter (classic BPF): a dispatch on the system call written
//! out instruction by instruction, and `socket`, `socketpair` and
//! `setsockopt` sections generated from `nono_common`'s tables
//! (`ALLOWED_SOCKETS`, `REFUSED_OPTIONS`), the ones the BPF programs decide
//! from, so the two enforcers cannot refuse different things.
//!
//! Why not a crate: seccompiler has no `SECCOMP_RET_USER_NOTIF` action, and
//! libseccomp compares arguments as 64-bit values, so an `int` argument
//! passed with garbage in the upper half of its register slips past an
//! equality rule, while the kernel only looks at the lower half. Here every
//! `int` argument is judged by its low 32 bits, exactly as the kernel reads
//! it, and the program is small enough to read in full (see `build`) and is
//! executed by an interpreter in the tests, against the shared `decide_*`
//! functions over every family, type, protocol and option around the tables.

use nono_common::{
    cgroup_hook_sees, consts, decide_setsockopt, OptionContext, ALLOWED_SOCKETS, ANY,
    REFUSED_OPTIONS,
};
use std::os::fd::RawFd;

use super::Error;
use asm::{assemble, skip, Insn, To};

mod asm;

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

// Terminal ioctl requests (asm-generic/ioctls.h).
pub(crate) const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;
const TIOCSETD: u32 = 0x5423;
const TIOCCONS: u32 = 0x541d;

pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;
pub(crate) const RET_USER_NOTIF: u32 = 0x7fc0_0000;
pub(crate) const RET_ERRNO: u32 = 0x0005_0000;

fn errno(e: i32) -> u32 {
    RET_ERRNO | (e as u32 & 0xffff)
}

/// What a refused call gets: under the supervisor it goes there (to be
/// logged and answered EPERM), under the BPF enforcer it fails with EPERM.
pub(crate) fn refusal(mode: Mode) -> u32 {
    match mode {
        Mode::Notify => RET_USER_NOTIF,
        Mode::Harden => errno(libc::EPERM),
    }
}

/// What the filter knows about a `setsockopt` beyond level and name: it
/// cannot read the option's value, so under the supervisor every entry of
/// `REFUSED_OPTIONS` is refused (device binding even to `lo` included);
/// under the BPF enforcer the entries the BPF setsockopt program judges by
/// value, or its egress program backstops, are left to it.
pub(crate) fn option_context(mode: Mode) -> OptionContext {
    match mode {
        Mode::Notify => OptionContext {
            binds_loopback_device: false,
            packet_filter: false,
        },
        Mode::Harden => OptionContext {
            binds_loopback_device: true,
            packet_filter: true,
        },
    }
}

/// Whether the filter leaves `socket` calls of `family` to the BPF
/// `sock_create` program, which judges (and logs) them from the same table.
pub(crate) fn socket_left_to_bpf(mode: Mode, family: u32) -> bool {
    mode == Mode::Harden && cgroup_hook_sees(family)
}

/// The distinct values of `it`, in the order they first appear (the order
/// of the tables, so the generated program reads like them).
fn distinct<T: PartialEq>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for v in it {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// The `socket` (or, with `pair`, `socketpair`) checks, generated from the
/// shared table (`nono_common::ALLOWED_SOCKETS`) so this filter and the BPF
/// sock_create program allow the same sockets. Arguments are judged by
/// their low 32 bits, as the kernel reads an `int`.
fn socket_section(mode: Mode, pair: bool) -> Result<Vec<Insn>, Error> {
    use Insn::*;
    use To::{Label as L, Next};
    let refuse = refusal(mode);
    let mut out = vec![Ld(off_arg_lo(0))];
    for family in distinct(ALLOWED_SOCKETS.iter().map(|r| r.family)) {
        let rules: Vec<_> = ALLOWED_SOCKETS
            .iter()
            .filter(|r| r.family == family && (r.socketpair || !pair))
            .collect();
        let mut block = Vec::new();
        if !pair && socket_left_to_bpf(mode, family) {
            block.push(Ret(RET_ALLOW));
        } else if rules.is_empty() {
            continue;
        } else {
            for ty in distinct(rules.iter().map(|r| r.ty)) {
                // Protocols allowed with this type: a match allows, a
                // mismatch falls through to the next type (or the refusal).
                let mut protos = Vec::new();
                if rules.iter().any(|r| r.ty == ty && r.protocol == ANY) {
                    protos.push(Ret(RET_ALLOW));
                } else {
                    protos.push(Ld(off_arg_lo(2)));
                    for r in rules.iter().filter(|r| r.ty == ty) {
                        protos.push(Jeq(r.protocol, L("allow"), Next));
                    }
                }
                if ty != ANY {
                    block.push(Ld(off_arg_lo(1)));
                    block.push(And(consts::SOCK_TYPE_MASK));
                    block.push(Jeq(ty, Next, skip(&protos)?));
                }
                block.extend(protos);
            }
            block.push(Ret(refuse));
        }
        // The family was loaded over the block: a family's block ends the
        // decision, so the next comparison still sees the family.
        out.push(Jeq(family, Next, skip(&block)?));
        out.extend(block);
    }
    out.push(Ret(refuse));
    Ok(out)
}

/// The `setsockopt` checks, generated from the shared table
/// (`nono_common::REFUSED_OPTIONS`) so this filter and the BPF setsockopt
/// program refuse the same options (see [`option_context`]).
fn setsockopt_section(mode: Mode) -> Result<Vec<Insn>, Error> {
    use Insn::*;
    use To::{Label as L, Next};
    let ctx = option_context(mode);
    let mut out = vec![Ld(off_arg_lo(1))];
    for level in distinct(REFUSED_OPTIONS.iter().map(|e| e.level)) {
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
        out.push(Jeq(level as u32, Next, skip(&block)?));
        out.extend(block);
    }
    out.push(Ret(RET_ALLOW));
    Ok(out)
}

/// A built filter, ready to install in the sandbox's first process.
///
/// Built in the agent before fork (the child may only make system calls,
/// not allocate), installed by the child last, after everything else that
/// needs the calls it refuses.
#[derive(Debug, Clone)]
pub struct Filter {
    prog: Vec<libc::sock_filter>,
    /// Installed with a notification listener for the supervisor.
    notify: bool,
}

impl Filter {
    /// The filter for `mode`.
    pub fn new(mode: Mode) -> Result<Self, Error> {
        Ok(Self {
            prog: build(mode)?,
            notify: mode == Mode::Notify,
        })
    }

    /// Installs the filter on the calling thread (inherited by everything
    /// it starts). Runs in the child between fork and exec: system calls
    /// only. Returns the notification listener when a supervisor is to take
    /// it.
    pub fn install(&self) -> std::io::Result<Option<RawFd>> {
        let fd = super::notify::install_with_listener(&self.prog, self.notify)?;
        Ok(self.notify.then_some(fd))
    }
}

/// The filter program for `mode`.
pub fn build(mode: Mode) -> Result<Vec<libc::sock_filter>, Error> {
    use Insn::*;
    use To::{Label as L, Next};
    let watch = match mode {
        Mode::Notify => RET_USER_NOTIF,
        Mode::Harden => RET_ALLOW,
    };
    let refuse = refusal(mode);
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
    prog.extend(setsockopt_section(mode)?);
    // socket(domain, type, protocol): nono_common::ALLOWED_SOCKETS.
    prog.push(Label("socket"));
    prog.extend(socket_section(mode, false)?);
    // socketpair(domain, type, protocol): the kinds allowed in pairs.
    prog.push(Label("socketpair"));
    prog.extend(socket_section(mode, true)?);
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
    // The program is fixed: a failure here is a bug the tests catch.
    assemble(&prog)
}

#[cfg(test)]
mod tests;
