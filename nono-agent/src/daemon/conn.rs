//! Reading frames (with the descriptors that ride along) from a client
//! connection, with the limits a hostile client meets.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::time::Duration;
use tokio::io::{AsyncWriteExt as _, Interest};
use tokio::net::UnixStream;

use super::protocol::{self, ProtocolError};

/// How long the rest of a frame may take once its first byte arrived: a
/// client that trickles bytes holds a connection, not the daemon.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(5);

/// Errors of reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket failed.
    #[error("reading from the client")]
    Io(#[source] std::io::Error),
    /// The frame was refused.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The frame did not complete in time.
    #[error("the request was not completed within {FRAME_DEADLINE:?}")]
    Slow,
    /// The connection closed in the middle of a frame.
    #[error("the connection closed in the middle of a request")]
    Truncated,
}

/// A frame's payload and the descriptors that came with it.
pub type Frame = (Vec<u8>, Vec<OwnedFd>);

/// Buffers bytes and descriptors until a whole frame is there.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// When the frame being read must be complete: set by its first byte,
    /// not renewed by later ones.
    deadline: Option<tokio::time::Instant>,
}

impl Reader {
    /// The next frame's payload and the descriptors received with it;
    /// `None` at a clean end of the connection.
    pub async fn next(&mut self, sock: &UnixStream) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            let more = if self.buf.is_empty() {
                self.deadline = None;
                self.fill(sock).await?
            } else {
                let deadline = *self
                    .deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + FRAME_DEADLINE);
                tokio::time::timeout_at(deadline, self.fill(sock))
                    .await
                    .map_err(|_| ConnError::Slow)??
            };
            if !more {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Truncated)
                };
            }
        }
    }

    fn take_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let n = protocol::frame_len([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])?;
        if self.buf.len() < 4 + n {
            return Ok(None);
        }
        let payload = self.buf[4..4 + n].to_vec();
        self.buf.drain(..4 + n);
        // The next frame's clock starts with what is left of it now.
        self.deadline = None;
        Ok(Some((payload, std::mem::take(&mut self.fds))))
    }

    /// Gives back descriptors a frame did not use, for the frames after it.
    /// A client may send a request before the answer to the one before
    /// (`exec` sends place right behind create), and one `recvmsg` then
    /// returns both frames' bytes with the second one's descriptor, which
    /// [`Self::next`] hands to the first: it must still reach the second.
    /// (A descriptor is only ever a pidfd the client chose to send; the
    /// request that takes it checks the process behind it, whatever frame
    /// it came with.) Only while bytes of a next frame are already here:
    /// descriptors no later frame can have brought are closed, or a client
    /// could leave the daemon holding one for good (its own end of this
    /// connection, which then never reaches end of stream).
    pub fn requeue(&mut self, fds: Vec<OwnedFd>) {
        if self.buf.is_empty() {
            return;
        }
        let mut fds = fds;
        fds.append(&mut self.fds);
        fds.truncate(4);
        self.fds = fds;
    }

    /// One `recvmsg`; false at end of stream.
    async fn fill(&mut self, sock: &UnixStream) -> Result<bool, ConnError> {
        loop {
            sock.readable().await.map_err(ConnError::Io)?;
            let mut chunk = [0u8; 8192];
            match sock.try_io(Interest::READABLE, || recv(sock.as_raw_fd(), &mut chunk)) {
                Ok((0, fds)) => {
                    self.fds.extend(fds);
                    return Ok(false);
                }
                Ok((n, fds)) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    // At most a few descriptors are ever meaningful; more are
                    // closed on arrival.
                    for fd in fds {
                        if self.fds.len() < 4 {
                            self.fds.push(fd);
                        }
                    }
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
    }
}

/// `recvmsg` with room for two descriptors (more are discarded by the
/// kernel: `MSG_CTRUNC`), received close-on-exec.
fn recv(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((2 * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: zeroed msghdr is a valid "no name, no control" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // `as _`: socklen_t on musl, size_t on glibc.
    msg.msg_controllen = space as _;
    // SAFETY: msg points at valid buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the libc
    // macros that bound every step by msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const RawFd;
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, fds))
}

/// Sends one frame.
pub async fn send<T: serde::Serialize>(sock: &mut UnixStream, body: &T) -> std::io::Result<()> {
    sock.write_all(&protocol::encode(body)).await
}

/// Sends one frame with a descriptor (blocking socket, client side).
pub fn send_with_fd(
    sock: RawFd,
    frame: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr() as *mut libc::c_void,
        iov_len: frame.len(),
    };
    // SAFETY: pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: zeroed msghdr is valid; filled below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // `as _`: socklen_t on musl, size_t on glibc.
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer has room for one header with one fd.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd.as_raw_fd());
    }
    let mut sent = 0;
    while sent < frame.len() {
        // SAFETY: msg points at valid buffers; after the first chunk the
        // control data has been delivered and is dropped.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
        iov.iov_base = frame[sent..].as_ptr() as *mut libc::c_void;
        iov.iov_len = frame.len() - sent;
        msg.msg_iov = &mut iov;
        msg.msg_control = std::ptr::null_mut();
        msg.msg_controllen = 0;
    }
    Ok(())
}
