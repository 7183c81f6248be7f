//! The client side of the daemon protocol, used by `exec` and `doctor`.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::conn;
use super::protocol::{self, ProtocolError, Reply, Request, WirePolicy};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/nono-agent/daemon.sock";

/// How long a reply may take (a create or an end kills and removes things;
/// seconds at worst).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("talking to the daemon at {}", .path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A reply could not be decoded.
    #[error("the daemon's reply")]
    Protocol(#[from] ProtocolError),
    /// The daemon refused.
    #[error("the daemon refused: {0}")]
    Refused(String),
    /// The daemon answered something else than expected.
    #[error("unexpected reply from the daemon: {0}")]
    Unexpected(String),
}

type Result<T, E = ClientError> = std::result::Result<T, E>;

/// What `Create` returned.
#[derive(Debug, Clone)]
pub struct Created {
    /// The sandbox cgroup.
    pub cgroup: String,
    /// Nested in the caller's sandbox.
    pub nested: bool,
    /// For `Resume`.
    pub token: String,
}

/// A blocking connection (before the child runs).
pub struct Client {
    sock: UnixStream,
    path: PathBuf,
    /// Events that arrived while waiting for a reply.
    pub early_events: Vec<Vec<u8>>,
}

impl Client {
    /// Connects; `Ok(None)` when nothing listens there.
    pub fn connect(path: &Path) -> Result<Option<Self>> {
        match UnixStream::connect(path) {
            Ok(sock) => {
                let _ = sock.set_read_timeout(Some(REPLY_TIMEOUT));
                Ok(Some(Self {
                    sock,
                    path: path.to_path_buf(),
                    early_events: Vec::new(),
                }))
            }
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ECONNREFUSED | libc::ENOTDIR)
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(ClientError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn io(&self) -> impl Fn(std::io::Error) -> ClientError + '_ {
        move |source| ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn read_reply(&mut self) -> Result<Reply> {
        loop {
            let mut len = [0u8; 4];
            self.sock.read_exact(&mut len).map_err(self.io())?;
            let n = protocol::frame_len(len)?;
            let mut payload = vec![0u8; n];
            self.sock.read_exact(&mut payload).map_err(self.io())?;
            match protocol::decode::<Reply>(&payload)? {
                Reply::Event { raw } => self.early_events.push(raw),
                Reply::Error { message } => return Err(ClientError::Refused(message)),
                r => return Ok(r),
            }
        }
    }

    fn request(&mut self, req: &Request) -> Result<Reply> {
        let frame = protocol::encode(req);
        self.sock.write_all(&frame).map_err(self.io())?;
        self.read_reply()
    }

    /// The daemon's version, uptime (seconds), sandbox count and policy
    /// entry count.
    pub fn status(&mut self) -> Result<(String, u64, usize, usize)> {
        match self.request(&Request::Status)? {
            Reply::Status {
                version,
                uptime_secs,
                sandboxes,
                policy_entries,
            } => Ok((version, uptime_secs, sandboxes, policy_entries)),
            r => Err(ClientError::Unexpected(format!("{r:?}"))),
        }
    }

    /// Creates this connection's sandbox.
    pub fn create(&mut self, id: &str, policy: WirePolicy) -> Result<Created> {
        self.send_create(id, policy)?;
        self.finish_create()
    }

    /// Sends the create request without waiting for the answer: `exec`
    /// starts its child and sends the place request meanwhile, then reads
    /// both answers ([`Self::finish_create`], [`Self::finish_place`]). The
    /// daemon answers a connection's requests in order.
    pub fn send_create(&mut self, id: &str, policy: WirePolicy) -> Result<()> {
        let frame = protocol::encode(&Request::Create {
            id: id.to_string(),
            policy,
        });
        self.sock.write_all(&frame).map_err(self.io())
    }

    /// The answer to [`Self::send_create`].
    pub fn finish_create(&mut self) -> Result<Created> {
        match self.read_reply()? {
            Reply::Created {
                cgroup,
                nested,
                token,
            } => Ok(Created {
                cgroup,
                nested,
                token,
            }),
            r => Err(ClientError::Unexpected(format!("{r:?}"))),
        }
    }

    /// Asks the daemon to move the process behind `pidfd` (our child,
    /// waiting) into the sandbox.
    pub fn place(&mut self, pidfd: BorrowedFd<'_>) -> Result<()> {
        self.send_place(pidfd)?;
        self.finish_place()
    }

    /// Sends the place request (see [`Self::send_create`]).
    pub fn send_place(&mut self, pidfd: BorrowedFd<'_>) -> Result<()> {
        let frame = protocol::encode(&Request::Place);
        conn::send_with_fd(self.sock.as_raw_fd(), &frame, pidfd).map_err(self.io())
    }

    /// The answer to [`Self::send_place`].
    pub fn finish_place(&mut self) -> Result<()> {
        match self.read_reply()? {
            Reply::Placed => Ok(()),
            r => Err(ClientError::Unexpected(format!("{r:?}"))),
        }
    }

    /// Transparent mode: where the redirected socket with this cookie
    /// dialled, as the daemon's record says (on a connection of its own).
    pub fn lookup(
        &mut self,
        id: &str,
        token: &str,
        cookie: u64,
    ) -> Result<Option<([u8; 16], u16)>> {
        match self.request(&Request::Lookup {
            id: id.to_string(),
            token: token.to_string(),
            cookie,
        })? {
            Reply::Original { dialled } => Ok(dialled),
            r => Err(ClientError::Unexpected(format!("{r:?}"))),
        }
    }

    /// Re-attaches to a sandbox after the daemon restarted.
    pub fn resume(&mut self, id: &str, token: &str) -> Result<()> {
        match self.request(&Request::Resume {
            id: id.to_string(),
            token: token.to_string(),
        })? {
            Reply::Resumed => Ok(()),
            r => Err(ClientError::Unexpected(format!("{r:?}"))),
        }
    }

    /// The connection for the event stream, once the child runs.
    pub fn into_async(self) -> Result<AsyncClient> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        self.sock.set_nonblocking(true).map_err(io)?;
        let sock = tokio::net::UnixStream::from_std(self.sock).map_err(io)?;
        Ok(AsyncClient {
            sock,
            reader: conn::Reader::default(),
            path: self.path,
        })
    }
}

/// The connection while the child runs: events in, `End` out.
pub struct AsyncClient {
    sock: tokio::net::UnixStream,
    reader: conn::Reader,
    path: PathBuf,
}

/// What the daemon sent while the child runs.
pub enum Incoming {
    /// A denial record.
    Event(Vec<u8>),
    /// The connection is gone (the daemon stopped or died).
    Closed,
}

impl AsyncClient {
    /// The next event, or `Closed`.
    pub async fn next(&mut self) -> Incoming {
        loop {
            match self.reader.next(&self.sock).await {
                Ok(Some((payload, _))) => match protocol::decode::<Reply>(&payload) {
                    Ok(Reply::Event { raw }) => return Incoming::Event(raw),
                    Ok(_) => continue,
                    Err(_) => return Incoming::Closed,
                },
                _ => return Incoming::Closed,
            }
        }
    }

    /// Ends the sandbox without waiting for the answer, for a caller that
    /// has no use for the last events (nothing would show them): the daemon
    /// ends it on the request as on any `End` (and as it would on the closed
    /// connection).
    pub async fn end_unanswered(mut self) -> Result<()> {
        conn::send(&mut self.sock, &Request::End)
            .await
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Ends the sandbox; returns the events still queued and the number
    /// the daemon dropped.
    pub async fn end(mut self) -> Result<(Vec<Vec<u8>>, u64)> {
        let io = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        conn::send(&mut self.sock, &Request::End)
            .await
            .map_err(io)?;
        let mut events = Vec::new();
        loop {
            let f = tokio::time::timeout(REPLY_TIMEOUT, self.reader.next(&self.sock))
                .await
                .map_err(|_| ClientError::Unexpected("no answer to end".into()))?;
            match f {
                Ok(Some((payload, _))) => match protocol::decode::<Reply>(&payload)? {
                    Reply::Event { raw } => events.push(raw),
                    Reply::Ended { dropped } => return Ok((events, dropped)),
                    Reply::Error { message } => return Err(ClientError::Refused(message)),
                    r => return Err(ClientError::Unexpected(format!("{r:?}"))),
                },
                Ok(None) => {
                    return Err(ClientError::Unexpected(
                        "the daemon closed the connection".into(),
                    ))
                }
                Err(e) => return Err(ClientError::Unexpected(e.to_string())),
            }
        }
    }
}
