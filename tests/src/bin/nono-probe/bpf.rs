//! Minimal bpf(2) wrappers for the vectors that go after the enforcer's
//! programs (`detach-bpf`, `steal-fds --use links`).

use std::io;

pub const BPF_OBJ_GET: libc::c_long = 7;
pub const BPF_PROG_DETACH: libc::c_long = 9;
pub const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
pub const BPF_PROG_QUERY: libc::c_long = 16;
pub const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
pub const BPF_LINK_DETACH: libc::c_long = 34;

pub const ATTACH_TYPES: &[(u32, &str)] = &[
    (2, "sock_create"),
    (10, "connect4"),
    (11, "connect6"),
    (14, "sendmsg4"),
    (15, "sendmsg6"),
];

/// `union bpf_attr`, as raw 128 bytes (large enough for every command used).
#[repr(C, align(8))]
pub struct Attr(pub [u8; 128]);

impl Attr {
    pub fn new() -> Self {
        Attr([0; 128])
    }
    pub fn u32_at(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn u64_at(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    pub fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }
}

pub fn sys(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a 128-byte buffer, matching the size we pass.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), 128u32) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
