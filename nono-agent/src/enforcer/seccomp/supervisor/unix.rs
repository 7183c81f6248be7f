//! Unix socket paths, resolved once as the target would resolve them.

use std::os::fd::OwnedFd;

use super::perform::errno;

/// The path a sockaddr_un names, as the target would resolve it: absolute
/// paths through /proc/PID/root (its root and mount namespace), relative
/// ones through /proc/PID/cwd. Only opened with O_PATH, never put back in a
/// sockaddr, so its length is not limited to sun_path.
pub(super) fn unix_path_for(pid: u32, addr: Vec<u8>) -> Vec<u8> {
    let path = &addr[2..];
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    let base = if path.first() == Some(&b'/') {
        format!("/proc/{pid}/root")
    } else {
        format!("/proc/{pid}/cwd/")
    };
    let mut out = addr[..2].to_vec();
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(&path[..end]);
    out.push(0);
    out
}

/// Opens (O_PATH) the socket a path-named sockaddr_un names (already
/// rewritten to go through /proc/PID/root or /proc/PID/cwd) and returns it
/// with its (device, inode), or the errno the kernel would give.
pub(super) fn open_unix_path(addr: &[u8]) -> Result<(OwnedFd, (u64, u64)), i32> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let path = addr.get(2..).ok_or(libc::EINVAL)?;
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    // nix's open, not OpenOptions::custom_flags: std masks the custom flags
    // with O_ACCMODE, which on musl includes O_PATH (musl's O_SEARCH), so
    // the open would lose O_PATH and fail on a socket with ENXIO.
    let fd = nix::fcntl::open(
        std::path::Path::new(std::ffi::OsStr::from_bytes(&path[..end])),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| e as i32)?;
    let f = std::fs::File::from(fd);
    let m = f.metadata().map_err(errno)?;
    if !m.file_type().is_socket() {
        return Err(libc::ECONNREFUSED);
    }
    Ok((OwnedFd::from(f), (m.dev(), m.ino())))
}
