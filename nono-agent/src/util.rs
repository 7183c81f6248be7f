//! Small helpers shared by several modules.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Errors of the helpers in this module.
#[derive(Debug, thiserror::Error)]
pub enum UtilError {
    /// [`ensure_dir`] could not create the directory.
    #[error("creating {}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// [`ensure_dir`] created the directory but could not set its mode.
    #[error("chmod {}", .path.display())]
    Chmod {
        /// The directory.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// [`random_hex`] could not read the kernel's random source.
    #[error("getting random bytes from the kernel for {what}")]
    Random {
        /// What the random bytes were for.
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Creates directory `p` if it is missing, and gives a directory it created
/// `mode` (an existing one is left as it is).
pub fn ensure_dir(p: &Path, mode: Option<u32>) -> Result<(), UtilError> {
    match std::fs::create_dir(p) {
        Ok(()) => {
            if let Some(mode) = mode {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(
                    |source| UtilError::Chmod {
                        path: p.to_path_buf(),
                        source,
                    },
                )?;
            }
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(UtilError::CreateDir {
            path: p.to_path_buf(),
            source,
        }),
    }
}

/// `bytes` random bytes from the kernel, as lower-case hex; `what` names the
/// use in the error message.
pub fn random_hex(bytes: usize, what: &str) -> Result<String, UtilError> {
    let mut b = vec![0u8; bytes];
    let mut filled = 0;
    // getrandom(2): one system call where opening /dev/urandom took four
    // (open, musl's extra fcntl, read, close), on every sandbox's start.
    while filled < b.len() {
        // SAFETY: writes at most the remaining length into our buffer.
        let r = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if r < 0 {
            let source = std::io::Error::last_os_error();
            if source.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(UtilError::Random {
                what: what.to_string(),
                source,
            });
        }
        filled += r as usize;
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Reads a small kernel file (`/proc`, `/sys`) whole, as text. Such files
/// report size 0, so `fs::read_to_string` asks `fstat`, then reads 32 bytes
/// and doubles: 6-8 system calls for a `/proc/PID/status`, on the daemon's
/// and the seccomp supervisor's per-request paths. One 4 KiB buffer takes
/// it in a read and the read that sees the end.
pub fn read_small(mut f: impl std::io::Read) -> std::io::Result<String> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    loop {
        if n == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(r) => n += r,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    // A process names itself (`comm`, the `Name:` line of its status) with
    // any bytes: a name that is not UTF-8 must not make its identity
    // unreadable (the fields read from these files are numbers and paths
    // the kernel writes; `Name:` escapes newlines, so no line can be forged).
    Ok(match String::from_utf8(buf) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// [`read_small`] of the file at `p`.
pub fn read_small_path(p: impl AsRef<Path>) -> std::io::Result<String> {
    read_small(std::fs::File::open(p)?)
}

/// The address a canonical one (IPv6, v4 as v4-mapped: how `nono_common`
/// stores every address) stands for: v4-mapped ones as plain IPv4.
pub fn canonical_ip(a: [u8; 16]) -> std::net::IpAddr {
    let v6 = std::net::Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => std::net::IpAddr::V4(v4),
        None => std::net::IpAddr::V6(v6),
    }
}

/// `e` followed by its sources, joined by ": ": what `anyhow`'s `{:#}`
/// prints, for errors reported as text (teardown, sweeps) rather than
/// returned to `main`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_small_takes_names_that_are_not_utf8() {
        let text = b"Name:\t\xe9t\xe9\nUid:\t1\t1\t1\t1\n".to_vec();
        let s = super::read_small(&text[..]).unwrap();
        assert!(s.lines().any(|l| l == "Uid:\t1\t1\t1\t1"), "{s:?}");
        let big = vec![b'x'; 10_000];
        assert_eq!(super::read_small(&big[..]).unwrap().len(), 10_000);
    }

    use super::*;

    #[test]
    fn chain_joins_sources_as_anyhow_alternate_does() {
        let e = UtilError::CreateDir {
            path: PathBuf::from("/x"),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        let expected = format!(
            "{:#}",
            anyhow::Error::from(UtilError::CreateDir {
                path: PathBuf::from("/x"),
                source: std::io::Error::from_raw_os_error(libc::EACCES),
            })
        );
        assert_eq!(chain(&e), expected);
        assert!(chain(&e).starts_with("creating /x: "));
    }
}
