//! One direction of a TCP-to-TCP tunnel moved by the kernel: `splice(2)`
//! from the source socket into a pipe and from the pipe into the destination
//! socket, so the payload never enters this process's memory (no copy
//! buffer, nothing for the allocator to keep). Bytes are counted from the
//! splice results.
//!
//! The pipe is made when data first arrives and dropped again after
//! [`PIPE_IDLE`] without data, so an idle tunnel holds two sockets and no
//! pipe. When no pipe can be made (file descriptors exhausted, e.g. by a
//! sandbox opening thousands of tunnels) the direction copies through a
//! small buffer for that chunk instead of failing the tunnel.

use bytes::Bytes;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::fcntl::{splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A pipe with no data for this long is closed (made again on the next
/// data): idle tunnels then cost no pipe.
pub(crate) const PIPE_IDLE: Duration = Duration::from_secs(2);

/// The most one splice call moves into a new pipe: the default pipe
/// capacity (16 pages). The pipe never holds more than its capacity, so a
/// slow receiver pins at most that much kernel memory per direction.
const CHUNK: usize = 64 * 1024;

/// A direction that moved this much through one pipe is bulk: its pipe
/// grows to [`GROWN`]. Each slot of a pipe holds one socket buffer's
/// fragment, often a single segment's worth, so a 16-slot pipe moves
/// little per call on a stream received in small segments.
const GROW_AFTER: u64 = 1024 * 1024;

/// The capacity of a bulk direction's pipe (the kernel's default
/// `pipe-max-size`). Refused (EPERM) once the user's pipes exceed
/// `pipe-user-pages-soft`: the pipe then stays small. Given back with the
/// pipe after [`PIPE_IDLE`].
const GROWN: usize = 1024 * 1024;

/// Size of the fallback copy buffer (only while no pipe can be made).
const FALLBACK_BUF: usize = 16 * 1024;

/// Makes the pipe of a direction; a parameter so tests can make it fail.
pub(crate) type MakePipe = fn() -> io::Result<Pipe>;

/// The two ends of a non-blocking pipe.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// The most one splice moves into it (its capacity).
    chunk: usize,
    /// Bytes moved through it, until it grew.
    moved: u64,
}

impl Pipe {
    /// A new non-blocking, close-on-exec pipe.
    pub(crate) fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Self {
            read,
            write,
            chunk: CHUNK,
            moved: 0,
        })
    }

    /// Counts `n` bytes moved; grows the pipe once they make it bulk.
    fn moved(&mut self, n: usize) {
        if self.chunk >= GROWN {
            return;
        }
        self.moved += n as u64;
        if self.moved >= GROW_AFTER {
            let grown = nix::fcntl::fcntl(&self.write, FcntlArg::F_SETPIPE_SZ(GROWN as i32));
            // Refused (pipe-user-pages-soft): stay small, and stop asking.
            self.chunk = grown.map_or(GROWN, |size| (size as usize).max(CHUNK));
        }
    }
}

/// Counters shared by both directions of a tunnel.
pub(crate) struct Meter<'a> {
    /// Bytes read from this direction's source.
    pub read: &'a AtomicU64,
    /// Bumped on every read, for the tunnel's idle timeout.
    pub activity: &'a AtomicU64,
}

impl Meter<'_> {
    fn add(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

/// Moves `prefix` and then everything `src` sends to `dst` until `src`
/// ends, then half-closes `dst` (shutdown for writing). An error on either
/// side ends the direction with that error. `prefix` (bytes already read
/// from the source, e.g. sent right behind a CONNECT head) is counted and
/// freed once written.
pub(crate) async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    prefix: Bytes,
    meter: Meter<'_>,
    make_pipe: MakePipe,
) -> io::Result<()> {
    if !prefix.is_empty() {
        meter.add(prefix.len());
        // Boxed, as the fallback below: rare states that would otherwise
        // enlarge every open tunnel's task.
        Box::pin(write_all(dst, &prefix)).await?;
    }
    // Often a slice of hyper's read buffer: not kept for the tunnel's life.
    drop(prefix);
    let mut pipe: Option<Pipe> = None;
    loop {
        if pipe.is_some() {
            // The pipe is empty here: close it if nothing comes for a while.
            match tokio::time::timeout(PIPE_IDLE, src.readable()).await {
                Ok(ready) => ready?,
                Err(_) => {
                    pipe = None;
                    continue;
                }
            }
        } else {
            src.readable().await?;
        }
        if pipe.is_none() {
            match make_pipe() {
                Ok(p) => pipe = Some(p),
                Err(_) => {
                    // No pipe (out of descriptors): this chunk through memory.
                    match Box::pin(copy_chunk(src, dst)).await? {
                        0 => break,
                        n => meter.add(n),
                    }
                    continue;
                }
            }
        }
        let Some(p) = pipe.as_mut() else { continue };
        let n = match src.try_io(Interest::READABLE, || into_pipe(src, p)) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        meter.add(n);
        let mut left = n;
        while left > 0 {
            left -= dst
                .async_io(Interest::WRITABLE, || out_of_pipe(p, dst, left))
                .await?;
        }
        // Empty again: the moment to grow it.
        p.moved(n);
    }
    half_close(dst)
}

/// Splices up to the pipe's capacity from `src` into the (empty) pipe; 0
/// at the end of the stream.
fn into_pipe(src: &TcpStream, p: &Pipe) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    Ok(splice(src.as_fd(), None, &p.write, None, p.chunk, flags)?)
}

/// Splices up to `len` bytes from the pipe into `dst`.
fn out_of_pipe(p: &Pipe, dst: &TcpStream, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    Ok(splice(&p.read, None, dst.as_fd(), None, len, flags)?)
}

/// One read from `src` written to `dst` through a buffer that is freed
/// again right after; 0 at the end of the stream.
async fn copy_chunk(src: &TcpStream, dst: &TcpStream) -> io::Result<usize> {
    let mut buf = vec![0u8; FALLBACK_BUF];
    let n = src
        .async_io(Interest::READABLE, || src.try_read(&mut buf))
        .await?;
    write_all(dst, &buf[..n]).await?;
    Ok(n)
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = dst
            .async_io(Interest::WRITABLE, || dst.try_write(data))
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// Shuts `dst` down for writing (the peer reads the end of the stream).
fn half_close(dst: &TcpStream) -> io::Result<()> {
    nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(dst),
        nix::sys::socket::Shutdown::Write,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(p: &Pipe) -> i32 {
        nix::fcntl::fcntl(&p.write, FcntlArg::F_GETPIPE_SZ).unwrap()
    }

    #[test]
    fn a_pipe_grows_only_once_the_direction_is_bulk() {
        let mut p = Pipe::new().unwrap();
        assert_eq!(capacity(&p) as usize, CHUNK);
        p.moved(CHUNK);
        assert_eq!(p.chunk, CHUNK, "64 KiB is not bulk yet");
        assert_eq!(capacity(&p) as usize, CHUNK);
        p.moved(GROW_AFTER as usize);
        // Root (the test runner) is never over pipe-user-pages-soft.
        assert_eq!(p.chunk, GROWN);
        assert_eq!(capacity(&p) as usize, GROWN);
    }
}
