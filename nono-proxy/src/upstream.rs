//! Chaining to an upstream (corporate) HTTP proxy.

use base64::Engine as _;
use hyper::header::HeaderValue;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// `--upstream-proxy http://[user:password@]HOST:PORT`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` to connect to.
    pub authority: String,
    auth: Option<String>,
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("--upstream-proxy {s:?}: only http:// proxies are supported"))?;
        let rest = rest.trim_end_matches('/');
        let (creds, hostport) = match rest.rsplit_once('@') {
            Some((c, h)) => (Some(c.to_string()), h),
            None => (None, rest),
        };
        let uri: hyper::Uri = format!("http://{hostport}/")
            .parse()
            .map_err(|_| format!("--upstream-proxy {s:?}: bad host:port"))?;
        let port = uri
            .port_u16()
            .ok_or_else(|| format!("--upstream-proxy {s:?}: a port is required"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("--upstream-proxy {s:?}: a host is required"))?;
        if hostport.contains('/') {
            return Err(format!("--upstream-proxy {s:?}: no path allowed"));
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
    pub async fn connect(&self, timeout: Duration) -> Result<TcpStream, String> {
        let s = tokio::time::timeout(timeout, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| format!("connect to {} timed out", self.authority))?
            .map_err(|e| format!("connect to {}: {e}", self.authority))?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    /// A CONNECT tunnel to `host:port` through the upstream.
    pub async fn tunnel(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, String> {
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
            .map_err(|e| e.to_string())?;
        // Read the response head byte by byte so no tunnel data is consumed.
        let mut head = Vec::with_capacity(256);
        let read = async {
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() > 16 * 1024 {
                    return Err("response head too large".to_string());
                }
                let b = s.read_u8().await.map_err(|e| e.to_string())?;
                head.push(b);
            }
            Ok(())
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| "no answer to CONNECT".to_string())??;
        let status_line = String::from_utf8_lossy(&head);
        let status = status_line.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            let first = status_line.lines().next().unwrap_or("").to_string();
            return Err(format!("upstream refused CONNECT {host}:{port}: {first}"));
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
