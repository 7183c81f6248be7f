//! A classic-BPF assembler for the few opcodes the filter uses: symbolic
//! jumps to labels become offsets, checked to be forward and in range.

use std::collections::HashMap;

use crate::enforcer::seccomp::Error;

// Classic BPF opcodes.
pub(super) const BPF_LD_W_ABS: u16 = 0x20;
pub(super) const BPF_ALU_AND_K: u16 = 0x54;
pub(super) const BPF_JEQ_K: u16 = 0x15;
pub(super) const BPF_JGE_K: u16 = 0x35;
pub(super) const BPF_RET_K: u16 = 0x06;

/// A jump target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum To {
    Next,
    Label(&'static str),
    /// Over this many instructions (for generated blocks).
    Skip(u8),
}

#[derive(Clone, Debug)]
pub(super) enum Insn {
    Ld(u32),
    And(u32),
    Jeq(u32, To, To),
    Jge(u32, To, To),
    Ret(u32),
    Label(&'static str),
}

/// `To::Skip` over `block`.
pub(super) fn skip(block: &[Insn]) -> Result<To, Error> {
    u8::try_from(block.len())
        .map(To::Skip)
        .map_err(|_| Error::BlockTooLong(block.len()))
}

/// Turns symbolic instructions into `sock_filter`s.
pub(super) fn assemble(prog: &[Insn]) -> Result<Vec<libc::sock_filter>, Error> {
    // Index of each real instruction and each label.
    let mut labels = HashMap::new();
    let mut n = 0usize;
    for i in prog {
        match i {
            Insn::Label(l) => {
                if labels.insert(*l, n).is_some() {
                    return Err(Error::DuplicateLabel(l));
                }
            }
            _ => n += 1,
        }
    }
    let mut out = Vec::with_capacity(n);
    let offset = |from: usize, to: To| -> Result<u8, Error> {
        match to {
            To::Next => Ok(0),
            To::Skip(n) => Ok(n),
            To::Label(l) => {
                let target = *labels.get(l).ok_or(Error::UnknownLabel(l))?;
                let off = target.checked_sub(from + 1).ok_or(Error::BackwardJump(l))?;
                u8::try_from(off).map_err(|_| Error::JumpTooFar(l))
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
