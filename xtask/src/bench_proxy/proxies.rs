//! The proxies under test (ours, tinyproxy, squid): start, sanity check,
//! CONNECT tunnels.

use anyhow::{bail, Context as _, Result};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use super::cleanup::{Proc, TempDir};
use super::rig::{in_netns, Net};
use super::tools::Tools;
use super::{BULK_PORT, DOMAIN, ORIGIN_SQUID, PORT_SQUID, PORT_TINYPROXY, SERVER_V4};

#[derive(Clone)]
pub(super) struct ProxyUnderTest {
    pub(super) name: &'static str,
    pub(super) port: u16,
    /// host:port requested in absolute-form URLs.
    pub(super) http_authority: String,
    pub(super) origin_port: u16,
    /// host:port for CONNECT.
    pub(super) tunnel_target: String,
    /// Proxy-Authorization value.
    pub(super) auth: Option<String>,
    pub(super) pid: i32,
}

impl ProxyUnderTest {
    pub(super) fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub(super) fn connect_request(&self) -> String {
        let mut r = format!(
            "CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n",
            t = self.tunnel_target
        );
        if let Some(a) = &self.auth {
            let _ = write!(r, "Proxy-Authorization: {a}\r\n");
        }
        r.push_str("\r\n");
        r
    }
}

pub(super) fn start_tinyproxy(net: &Net, tmp: &TempDir, tools: &Tools) -> Result<Proc> {
    let dir = tmp.path.join("tinyproxy");
    std::fs::create_dir(&dir)?;
    let filter = dir.join("filter");
    // Exactly the origin's address (tinyproxy resolves names through the
    // system resolver, which this benchmark must not use).
    std::fs::write(
        &filter,
        format!("^{}$\n", SERVER_V4.to_string().replace('.', "\\.")),
    )?;
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {PORT_TINYPROXY}\nListen 127.0.0.1\nTimeout 600\nMaxClients 2048\n\
             LogLevel Critical\nLogFile \"{log}\"\nPidFile \"{pid}\"\n\
             Allow 127.0.0.1\nDisableViaHeader Yes\n\
             Filter \"{filter}\"\nFilterType ere\nFilterURLs Off\nFilterDefaultDeny Yes\n\
             ConnectPort {BULK_PORT}\n",
            log = dir.join("tinyproxy.log").display(),
            pid = dir.join("tinyproxy.pid").display(),
            filter = filter.display(),
        ),
    )?;
    let mut p = Proc::spawn_in(
        &net.cli,
        "tinyproxy",
        Command::new(&tools.tinyproxy)
            .arg("-d")
            .arg("-c")
            .arg(&conf),
        &dir.join("stderr.log"),
    )?;
    std::thread::sleep(Duration::from_millis(100));
    p.check_alive()?;
    Ok(p)
}

pub(super) fn start_squid(net: &Net, tmp: &TempDir, tools: &Tools) -> Result<Proc> {
    let dir = tmp.path.join("squid");
    std::fs::create_dir(&dir)?;
    // squid switches to its own user (cache_effective_user) and must write here.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, format!("{SERVER_V4} {DOMAIN}\n"))?;
    let conf = dir.join("squid.conf");
    std::fs::write(
        &conf,
        format!(
            "http_port 127.0.0.1:{PORT_SQUID}\n\
             visible_hostname nono-bench\n\
             pid_filename none\n\
             cache_log {log}\n\
             access_log none\n\
             cache_store_log none\n\
             logfile_rotate 0\n\
             coredump_dir {dir}\n\
             netdb_filename none\n\
             pinger_enable off\n\
             cache deny all\n\
             cache_mem 8 MB\n\
             hosts_file {hosts}\n\
             dns_nameservers 127.0.0.1\n\
             shutdown_lifetime 0 seconds\n\
             acl bench_dst dstdomain {DOMAIN}\n\
             acl bench_ports port {ORIGIN_SQUID} {BULK_PORT}\n\
             http_access allow bench_dst bench_ports\n\
             http_access deny all\n",
            log = dir.join("cache.log").display(),
            dir = dir.display(),
            hosts = hosts.display(),
        ),
    )?;
    let mut p = Proc::spawn_in(
        &net.cli,
        "squid",
        Command::new(&tools.squid).arg("-N").arg("-f").arg(&conf),
        &dir.join("stderr.log"),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    p.check_alive().with_context(|| {
        format!(
            "squid failed to start; see {}",
            dir.join("cache.log").display()
        )
    })?;
    Ok(p)
}

/// One request through `p` (and one CONNECT), checked, before measuring.
pub(super) fn sanity_check(cli: &str, p: &ProxyUnderTest) -> Result<()> {
    let addr = p.addr();
    let mut req = format!(
        "GET http://{a}/ HTTP/1.1\r\nHost: {a}\r\n",
        a = p.http_authority
    );
    if let Some(a) = &p.auth {
        let _ = write!(req, "Proxy-Authorization: {a}\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    let name = p.name;
    let connect = p.connect_request();
    in_netns(cli, move || {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(req.as_bytes())?;
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp);
        if !text.starts_with("HTTP/1.") || !text.contains("nono-bench-origin") {
            bail!(
                "{name}: a GET through it did not reach the origin:\n{}",
                text.lines().take(12).collect::<Vec<_>>().join("\n")
            );
        }
        let s = open_tunnel(addr, &connect)
            .with_context(|| format!("{name}: CONNECT to the bulk server"))?;
        drop(s);
        Ok(())
    })
}

/// Connects to a proxy and opens a CONNECT tunnel (blocking).
pub(super) fn open_tunnel(proxy: SocketAddr, connect: &str) -> Result<TcpStream> {
    let mut s = TcpStream::connect(proxy)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(connect.as_bytes())?;
    // Byte by byte, so no tunnelled byte is consumed with the head.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 || head.len() > 16 * 1024 {
            bail!(
                "proxy closed before answering CONNECT: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head);
    if status.split_whitespace().nth(1) != Some("200") {
        bail!(
            "CONNECT refused: {}",
            status.lines().next().unwrap_or_default()
        );
    }
    s.set_read_timeout(None)?;
    Ok(s)
}
