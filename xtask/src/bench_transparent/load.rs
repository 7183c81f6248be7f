//! The workloads `bench-transparent` runs inside a sandbox (internal
//! xtask subcommands, std only): a DNS query flood against whatever
//! resolver port 53 reaches (`dns-load`), and connections to a protocol
//! where the server speaks first (`banner-loop`).

use anyhow::{bail, Context as _, Result};
use std::io::{ErrorKind, Read as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _, UdpSocket};
use std::time::{Duration, Instant};

/// `--name value` pairs into a lookup.
fn opt<'a>(args: &'a [String], name: &str) -> Result<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .with_context(|| format!("{name} VALUE is required"))
}

/// A standard query for `name` (type A, recursion desired).
pub(super) fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(12 + name.len() + 6);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// `xtask dns-load --server ADDR:53 --name ALLOWED --seconds S --window W`:
/// keeps W queries in flight on one connected UDP socket for S seconds,
/// alternating the allowed name (an A answer) and fresh denied names
/// (NXDOMAIN); prints `DNS-LOAD answers=N a=N nxdomain=N lost=N secs=F`.
pub fn dns_load(args: &[String]) -> Result<()> {
    let server: SocketAddr = opt(args, "--server")?.parse().context("--server")?;
    let name = opt(args, "--name")?.to_string();
    let secs: f64 = opt(args, "--seconds")?.parse().context("--seconds")?;
    let window: usize = opt(args, "--window")?.parse().context("--window")?;
    if window == 0 || window > 4096 {
        bail!("--window must be 1..=4096");
    }
    let sock = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let (mut a, mut nx, mut lost, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut id: u16 = 0;
    let mut n: u64 = 0;
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        for _ in 0..window {
            id = id.wrapping_add(1);
            n += 1;
            let q = if n.is_multiple_of(2) {
                query(id, &name)
            } else {
                query(id, &format!("q{n}.denied.test"))
            };
            sock.send(&q)?;
        }
        let mut got = 0;
        while got < window {
            match sock.recv(&mut buf) {
                Ok(len) if len >= 12 => {
                    got += 1;
                    match buf[3] & 0x0f {
                        0 => a += 1,
                        3 => nx += 1,
                        _ => other += 1,
                    }
                }
                Ok(_) => other += 1,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    lost += (window - got) as u64;
                    break;
                }
                Err(e) => return Err(e).context("recv"),
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "DNS-LOAD answers={} a={a} nxdomain={nx} other={other} lost={lost} secs={elapsed:.3}",
        a + nx + other
    );
    Ok(())
}

/// `xtask banner-loop --host NAME|ADDR --port P --count N`: resolves once
/// (getaddrinfo, as clients do), then N times connects and reads the
/// server's first line; prints `BANNER` and each connection's time to that
/// line in microseconds, one per line.
pub fn banner_loop(args: &[String]) -> Result<()> {
    let host = opt(args, "--host")?;
    let port: u16 = opt(args, "--port")?.parse().context("--port")?;
    let count: usize = opt(args, "--count")?.parse().context("--count")?;
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("{host} has no IPv4 address"))?;
    println!("BANNER addr={addr}");
    let mut buf = [0u8; 256];
    for _ in 0..count {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut got = 0;
        while !buf[..got].contains(&b'\n') {
            let n = s.read(&mut buf[got..])?;
            if n == 0 {
                bail!("{addr} closed before its banner");
            }
            got += n;
        }
        println!("{}", t.elapsed().as_micros());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding() {
        let q = query(0x1234, "a.test.");
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x01a\x04test\x00\x00\x01\x00\x01");
    }
}
