//! Copying what a send names out of the target's memory: addresses,
//! payload, `struct msghdr` and its ancillary data (judged as copied).

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use super::perform::{errno, Msg, Sock};
use super::Supervisor;
use crate::enforcer::seccomp::identity;
use crate::enforcer::seccomp::judge;
use crate::enforcer::seccomp::notify::{self, Notif};

/// Largest payload copied for one send (bigger stream sends are partial
/// writes, which the caller must handle anyway; datagrams this big do not
/// exist).
pub(super) const MAX_PAYLOAD: usize = 16 << 20;
/// Largest ancillary data copied.
const MAX_CONTROL: usize = 64 << 10;
/// UIO_MAXIOV.
pub(super) const MAX_IOV: usize = 1024;

/// The kernel's `size_t` field at `off` of a struct copied from the target
/// (`msg_iovlen`, `msg_controllen`, `cmsg_len`). Read as 8 bytes, not
/// through the libc struct: musl declares these fields as 32-bit with a
/// padding word next to them (glibc as `size_t`), and the kernel reads all
/// 64 bits, so the supervisor must see the value the kernel would.
fn kernel_size_at(raw: &[u8], off: usize) -> Result<usize, i32> {
    let b = raw.get(off..off + 8).ok_or(libc::EFAULT)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    usize::try_from(u64::from_ne_bytes(a)).map_err(|_| libc::EMSGSIZE)
}

impl Supervisor {
    /// Copies `len` bytes of the target's memory at `addr`, valid only
    /// while the notification is pending.
    pub(super) fn read(&self, n: &Notif, addr: u64, len: usize) -> Result<Vec<u8>, i32> {
        let buf = notify::read_mem(n.pid, addr, len).map_err(|_| libc::EFAULT)?;
        // The pid may have been reused between notification and read: the
        // data only counts if the notification is still pending.
        if !notify::id_valid(self.listener.as_fd(), n.id) {
            return Err(libc::ESRCH);
        }
        Ok(buf)
    }

    /// Copies one `struct msghdr` at `ptr` and everything it points to.
    pub(super) fn copy_msghdr(
        &self,
        n: &Notif,
        ptr: u64,
        sock: &Sock,
        hook: &'static str,
    ) -> Result<Msg, i32> {
        let raw = self.read(n, ptr, std::mem::size_of::<libc::msghdr>())?;
        // SAFETY: `raw` holds exactly one msghdr's bytes; read_unaligned
        // copes with any alignment; all fields are plain integers/pointers
        // that we only use as numbers.
        let h: libc::msghdr = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        let name = if h.msg_name.is_null() || h.msg_namelen == 0 {
            None
        } else {
            Some(self.read(n, h.msg_name as u64, (h.msg_namelen as usize).min(128))?)
        };
        let iovlen = kernel_size_at(&raw, std::mem::offset_of!(libc::msghdr, msg_iovlen))?;
        let controllen = kernel_size_at(&raw, std::mem::offset_of!(libc::msghdr, msg_controllen))?;
        if iovlen > MAX_IOV {
            return Err(libc::EMSGSIZE);
        }
        let iov_raw = self.read(
            n,
            h.msg_iov as u64,
            iovlen * std::mem::size_of::<libc::iovec>(),
        )?;
        let mut data = Vec::new();
        for i in 0..iovlen {
            // SAFETY: bounds: iov_raw holds iovlen iovecs.
            let v: libc::iovec = unsafe {
                std::ptr::read_unaligned(
                    iov_raw
                        .as_ptr()
                        .add(i * std::mem::size_of::<libc::iovec>())
                        .cast(),
                )
            };
            let room = MAX_PAYLOAD - data.len();
            let take = v.iov_len.min(room);
            data.extend(self.read(n, v.iov_base as u64, take)?);
            if take < v.iov_len {
                break;
            }
        }
        let control = if h.msg_control.is_null() || controllen == 0 {
            Vec::new()
        } else {
            if controllen > MAX_CONTROL {
                return Err(libc::ENOBUFS);
            }
            self.read(n, h.msg_control as u64, controllen)?
        };
        let (control, fds) = self.vet_control(n, control, hook)?;
        let name = match name {
            Some(a) => Some(self.judge(n, hook, sock, a, true)?),
            None => None,
        };
        Ok(Msg {
            name,
            data,
            control,
            _fds: fds,
        })
    }

    /// Refuses ancillary data that reroutes packets or forges credentials
    /// (`judge::control_message`); translates SCM_RIGHTS descriptors into
    /// ours.
    fn vet_control(
        &self,
        n: &Notif,
        mut c: Vec<u8>,
        hook: &'static str,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), i32> {
        const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
        let mut fds = Vec::new();
        let mut off = 0usize;
        let mut pidfd: Option<OwnedFd> = None;
        while off + HDR <= c.len() {
            // SAFETY: bounds checked above; unaligned read of a plain struct.
            let h: libc::cmsghdr = unsafe { std::ptr::read_unaligned(c.as_ptr().add(off).cast()) };
            let len = kernel_size_at(&c[off..], std::mem::offset_of!(libc::cmsghdr, cmsg_len))?;
            if len < HDR || off + len > c.len() {
                return Err(libc::EINVAL);
            }
            let (level, ty) = (h.cmsg_level, h.cmsg_type);
            let data = &c[off + HDR..off + len];
            // SCM_CREDENTIALS: the kernel lets a process name only itself
            // (D-Bus clients do, on every connection); it is checked as the
            // kernel would for the target.
            let names_sender = if judge::names_credentials(level, ty) {
                let status = crate::util::read_small_path(format!("/proc/{}/status", n.pid))
                    .map_err(|_| libc::ESRCH)?;
                identity::ucred_names_itself(&status, data)
            } else {
                false
            };
            if let Err(d) = judge::control_message(level, ty, data, names_sender) {
                self.event_sockopt(n, hook, level, ty, d.reason);
                return Err(d.errno);
            }
            if judge::is_credentials(level, ty) {
                // Dropped: the send is made with the target's credentials
                // stamped by us (root) or by a child of ours
                // (unprivileged), never with a forged pid.
                let end = (off + ((len + 7) & !7)).min(c.len());
                c.drain(off..end);
                continue;
            }
            if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
                if pidfd.is_none() {
                    pidfd = Some(notify::pidfd_for_thread(n.pid).map_err(|_| libc::ESRCH)?);
                }
                let Some(p) = pidfd.as_ref() else {
                    return Err(libc::ESRCH);
                };
                let mut i = off + HDR;
                while i + 4 <= off + len {
                    let theirs = i32::from_ne_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                    let ours = notify::grab_fd(p.as_fd(), theirs).map_err(errno)?;
                    c[i..i + 4].copy_from_slice(&ours.as_raw_fd().to_ne_bytes());
                    fds.push(ours);
                    i += 4;
                }
            }
            // CMSG_ALIGN
            off += (len + 7) & !7;
        }
        if !notify::id_valid(self.listener.as_fd(), n.id) {
            return Err(libc::ESRCH);
        }
        Ok((c, fds))
    }
}
