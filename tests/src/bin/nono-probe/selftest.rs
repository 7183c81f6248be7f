//! `loopback-selftest`: servers and clients on loopback in one process.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use crate::attempt::{cvt, Attempt, Steps};
use crate::sock::{setsockopt_i32, socket, CONNECT_TIMEOUT};

/// One listener, one client, one round trip ("ping" / "pong") over TCP.
fn tcp_round(listener: &std::net::TcpListener, to: SocketAddr) -> io::Result<()> {
    use std::net::TcpStream;
    let mut c = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)?;
    c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    listener.set_nonblocking(false)?;
    let (mut s, _) = listener.accept()?;
    s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    c.write_all(b"ping")?;
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    s.write_all(b"pong")?;
    c.read_exact(&mut b)?;
    if &b != b"pong" {
        return Err(io::Error::other("wrong reply"));
    }
    Ok(())
}

fn udp_round(server: &std::net::UdpSocket, to: SocketAddr) -> io::Result<()> {
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("addr"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("addr"),
    };
    let c = std::net::UdpSocket::bind(any)?;
    c.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    server.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    c.send_to(b"ping", to)?;
    let mut b = [0u8; 4];
    let (_, from) = server.recv_from(&mut b)?;
    server.send_to(b"pong", from)?;
    c.recv_from(&mut b)?;
    if &b != b"pong" {
        return Err(io::Error::other("wrong reply"));
    }
    Ok(())
}

/// A listener from `listen()` on an unbound socket of `dom` (the kernel
/// picks a port and, outside a sandbox, the wildcard address).
fn unbound_listener(dom: libc::c_int) -> io::Result<std::net::TcpListener> {
    let fd = socket(dom, libc::SOCK_STREAM, 0)?;
    if dom == libc::AF_INET6 {
        setsockopt_i32(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    // SAFETY: plain syscall.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
    Ok(std::net::TcpListener::from(fd))
}

/// Servers and clients in the same process, over loopback only: TCP
/// listeners on 0.0.0.0, [::] (dual stack), 127.0.0.1, ::1 and from an
/// unbound listen(), reached via 127.0.0.1 and ::1 as each allows; UDP the
/// same way. One step per pair ("tcp [::] <- 127.0.0.1").
pub(crate) fn loopback_selftest(steps: &mut Steps) -> Attempt {
    let lo4 = IpAddr::from(Ipv4Addr::LOCALHOST);
    let lo6 = IpAddr::from(Ipv6Addr::LOCALHOST);
    let mut all = true;
    let mut record = |name: String, r: io::Result<()>| {
        let a = match r {
            Ok(()) => Attempt::success("round trip"),
            Err(e) => Attempt::fail(&name, &e),
        };
        all &= a.ok;
        steps.push(&name, &a);
    };
    let tcp: [(&str, Option<&str>, &[IpAddr]); 6] = [
        ("0.0.0.0", Some("0.0.0.0:0"), &[lo4]),
        ("[::]", Some("[::]:0"), &[lo4, lo6]),
        ("127.0.0.1", Some("127.0.0.1:0"), &[lo4]),
        ("[::1]", Some("[::1]:0"), &[lo6]),
        ("unbound4", None, &[lo4]),
        ("unbound6", None, &[lo6]),
    ];
    for (label, bind, to) in tcp {
        let l = match bind {
            Some(b) => std::net::TcpListener::bind(b),
            None => unbound_listener(if label == "unbound4" {
                libc::AF_INET
            } else {
                libc::AF_INET6
            }),
        };
        let l = match l {
            Ok(l) => l,
            Err(e) => {
                record(format!("tcp listen {label}"), Err(e));
                continue;
            }
        };
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        for ip in to {
            record(
                format!("tcp {label} <- {ip}"),
                tcp_round(&l, SocketAddr::new(*ip, port)),
            );
        }
    }
    let udp: [(&str, &[IpAddr]); 4] = [
        ("0.0.0.0:0", &[lo4]),
        ("[::]:0", &[lo4, lo6]),
        ("127.0.0.1:0", &[lo4]),
        ("[::1]:0", &[lo6]),
    ];
    for (bind, to) in udp {
        let s = match std::net::UdpSocket::bind(bind) {
            Ok(s) => s,
            Err(e) => {
                record(format!("udp bind {bind}"), Err(e));
                continue;
            }
        };
        let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
        for ip in to {
            record(
                format!("udp {bind} <- {ip}"),
                udp_round(&s, SocketAddr::new(*ip, port)),
            );
        }
    }
    if all {
        Attempt::success("every loopback round trip worked")
    } else {
        Attempt {
            ok: false,
            errno: None,
            detail: "some loopback round trips failed (see steps)".into(),
        }
    }
}
