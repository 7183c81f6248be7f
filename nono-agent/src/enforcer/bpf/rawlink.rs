//! A cgroup link made with the raw `bpf(BPF_LINK_CREATE)` call, for the one
//! program type whose aya 0.14 link cannot be pinned (`CgroupSockopt`).
//!
//! Why it must be pinned: every program that refuses something has to stay
//! attached when the agent is SIGKILLed and the sandbox keeps running until
//! `nono-agent cleanup`; an unpinned setsockopt link dies with the agent and
//! would let the sandbox join multicast groups from then on.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// Errors of the raw link calls.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `BPF_LINK_CREATE` failed.
    #[error("bpf(BPF_LINK_CREATE)")]
    Create(#[source] std::io::Error),
    /// `BPF_OBJ_PIN` failed.
    #[error("bpf(BPF_OBJ_PIN) at {path}")]
    Pin {
        /// The pin path.
        path: String,
        /// The error.
        #[source]
        err: std::io::Error,
    },
    /// `BPF_OBJ_GET` failed.
    #[error("bpf(BPF_OBJ_GET) at {path}")]
    Get {
        /// The pin path.
        path: String,
        /// The error.
        #[source]
        err: std::io::Error,
    },
    /// `BPF_OBJ_GET_INFO_BY_FD` failed.
    #[error("bpf(BPF_OBJ_GET_INFO_BY_FD)")]
    Info(#[source] std::io::Error),
    /// The pin path contains a NUL byte.
    #[error("pin path {0} contains a NUL byte")]
    Path(String),
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: `BPF_CGROUP_SETSOCKOPT`.
pub const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// `union bpf_attr` is 160 bytes in current kernels; a zeroed larger buffer
/// with the right size argument is what libbpf passes too.
const ATTR_LEN: usize = 160;

fn bpf(cmd: libc::c_long, attr: &mut [u8; ATTR_LEN]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable buffer of ATTR_LEN bytes laid out
    // as the command's part of `union bpf_attr`; the kernel reads at most
    // the size we pass.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_LEN as u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Attaches `prog` to the cgroup `target` with a BPF link (single mode: no
/// other program can be added beside it) and returns the link fd.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> Result<OwnedFd, Error> {
    let mut attr = [0u8; ATTR_LEN];
    // struct { __u32 prog_fd; __u32 target_fd; __u32 attach_type; __u32 flags; ... }
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(target.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    let fd = bpf(BPF_LINK_CREATE, &mut attr).map_err(Error::Create)?;
    // SAFETY: BPF_LINK_CREATE returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins `link` at `path` on a bpffs.
pub fn pin(link: &OwnedFd, path: &Path) -> Result<(), Error> {
    let shown = path.display().to_string();
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Path(shown.clone()))?;
    let mut attr = [0u8; ATTR_LEN];
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; __s32 path_fd; }
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(link.as_fd().as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_OBJ_PIN, &mut attr).map_err(|err| Error::Pin { path: shown, err })?;
    Ok(())
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `enum bpf_link_type`: `BPF_LINK_TYPE_CGROUP`.
const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// Opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> Result<OwnedFd, Error> {
    let shown = path.display().to_string();
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Path(shown.clone()))?;
    let mut attr = [0u8; ATTR_LEN];
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; __s32 path_fd; }
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr).map_err(|err| Error::Get { path: shown, err })?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// For a cgroup link: the id of the cgroup it is attached to, `Some(0)` once
/// the kernel has released that cgroup's programs (the link is "defunct":
/// the cgroup was removed and no socket refers to it any more). `None` for
/// other objects.
pub fn cgroup_link_target(link: BorrowedFd<'_>) -> Result<Option<u64>, Error> {
    // struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; union {
    // struct { __u64 cgroup_id; __u32 attach_type; } cgroup; ... } } with
    // the union 8-aligned: cgroup_id is at offset 16.
    let mut info = [0u8; 64];
    let mut attr = [0u8; ATTR_LEN];
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    attr[0..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(Error::Info)?;
    let ty = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
    if ty != BPF_LINK_TYPE_CGROUP {
        return Ok(None);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&info[16..24]);
    Ok(Some(u64::from_ne_bytes(id)))
}
