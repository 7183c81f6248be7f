//! Chaining to an upstream (corporate) HTTP proxy.

use base64::Engine as _;
use hyper::header::HeaderValue;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Why an `--upstream-proxy` URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not `http://`.
    #[error("--upstream-proxy {0:?}: only http:// proxies are supported")]
    Scheme(String),
    /// `HOST:PORT` does not parse.
    #[error("--upstream-proxy {0:?}: bad host:port")]
    HostPort(String),
    /// No `:PORT`.
    #[error("--upstream-proxy {0:?}: a port is required")]
    NoPort(String),
    /// No host.
    #[error("--upstream-proxy {0:?}: a host is required")]
    NoHost(String),
    /// A path after `HOST:PORT`.
    #[error("--upstream-proxy {0:?}: no path allowed")]
    Path(String),
}

/// Why the upstream proxy could not be used for a request.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting to it took longer than the connect timeout.
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    /// Connecting to it failed.
    #[error("connect to {authority}: {error}")]
    Connect {
        /// Its `host:port`.
        authority: String,
        /// The system's reason.
        error: std::io::Error,
    },
    /// Writing the CONNECT request or reading its answer failed.
    #[error("{0}")]
    Io(std::io::Error),
    /// The answer's head exceeded 16 KiB.
    #[error("response head too large")]
    HeadTooLarge,
    /// No complete answer within the connect timeout.
    #[error("no answer to CONNECT")]
    NoAnswer,
    /// It answered CONNECT with something other than 200.
    #[error("upstream refused CONNECT {target}: {status_line}")]
    Refused {
        /// `host:port` asked for.
        target: String,
        /// The first line of its answer.
        status_line: String,
    },
}

/// `--upstream-proxy http://[user:password@]HOST:PORT`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` to connect to.
    pub authority: String,
    auth: Option<String>,
}

impl std::str::FromStr for Upstream {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| UrlError::Scheme(s.to_string()))?;
        let rest = rest.trim_end_matches('/');
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c.to_string()), h),
            None => (None, rest),
        };
        let uri: hyper::Uri = format!("http://{hostport}/")
            .parse()
            .map_err(|_| UrlError::HostPort(s.to_string()))?;
        let port = uri
            .port_u16()
            .ok_or_else(|| UrlError::NoPort(s.to_string()))?;
        let host = uri.host().ok_or_else(|| UrlError::NoHost(s.to_string()))?;
        if hostport.contains('/') {
            return Err(UrlError::Path(s.to_string()));
        }
        Ok(Self {
            authority: format!("{host}:{port}"),
            auth: creds,
        })
    }
}

impl Upstream {
    /// `Proxy-Authorization` for the upstream, if credentials were given.
    pub fn authorization(&self) -> Option<HeaderValue> {
        self.auth.as_ref().and_then(|c| {
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(c)
            ))
            .ok()
        })
    }

    /// A plain connection to the upstream proxy.
    pub async fn connect(&self, timeout: Duration) -> Result<TcpStream, UpstreamError> {
        let s = tokio::time::timeout(timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.authority.clone()))?
            .map_err(|error| UpstreamError::Connect {
                authority: self.authority.clone(),
                error,
            })?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    /// A CONNECT tunnel to `host:port` through the upstream.
    pub async fn tunnel(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, UpstreamError> {
        let mut s = self.connect(timeout).await?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let mut req = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
        if let Some(a) = self
            .authorization()
            .and_then(|v| v.to_str().ok().map(str::to_string))
        {
            req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(UpstreamError::Io)?;
        // Read the response head byte by byte so no tunnel data is consumed.
        let mut head = Vec::with_capacity(256);
        let read = async {
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() > 16 * 1024 {
                    return Err(UpstreamError::HeadTooLarge);
                }
                let b = s.read_u8().await.map_err(UpstreamError::Io)?;
                head.push(b);
            }
            Ok(())
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| UpstreamError::NoAnswer)??;
        let status_line = String::from_utf8_lossy(&head);
        let status = status_line.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            let first = status_line.lines().next().unwrap_or("").to_string();
            return Err(UpstreamError::Refused {
                target: format!("{host}:{port}"),
                status_line: first,
            });
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let u: Upstream = "http://proxy.corp.test:3128".parse().unwrap();
        assert_eq!(u.authority, "proxy.corp.test:3128");
        assert!(u.authorization().is_none());
        let u: Upstream = "http://me:pw@[2001:db8::1]:8080/".parse().unwrap();
        assert_eq!(u.authority, "[2001:db8::1]:8080");
        assert!(u.authorization().is_some());
        for bad in [
            "https://p.test:1",
            "http://p.test",
            "p.test:3128",
            "http://p.test:3128/x",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad}");
        }
    }
}
