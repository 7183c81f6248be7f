//! `nono-agent proxy`: the filtering proxy on its own, until SIGINT/SIGTERM.

use anyhow::{bail, Result};
use std::net::SocketAddr;
use tokio::signal::unix::{signal, SignalKind};

use std::sync::Arc;

use crate::cli::StandaloneProxyArgs;
use crate::events;

/// A listener others can reach needs the secret: without it, anyone who
/// can connect to the address may use the proxy (and every allow rule).
/// (An empty secret is refused by the parser.)
fn check_listen(listen: &[SocketAddr], secret: Option<&str>) -> Result<()> {
    if secret.is_none() {
        if let Some(a) = listen.iter().find(|a| !a.ip().is_loopback()) {
            bail!(
                "--listen {a} is not a loopback address: anyone who can reach it could use the proxy; \
                 give --secret SECRET (clients then send Proxy-Authorization: Basic nono:SECRET), \
                 or listen on 127.0.0.1 / [::1]"
            );
        }
    }
    Ok(())
}

pub async fn run(args: StandaloneProxyArgs) -> Result<i32> {
    check_listen(&args.listen, args.secret.as_deref())?;
    let host = crate::config::load_from_env()?;
    let mut out = events::Output::open(args.events.as_deref())?;
    if let Some(p) = &host.events.path {
        if let Err(e) = out.add_file(&p.value) {
            eprintln!(
                "nono-agent: WARNING: the host configuration's events file: {}",
                crate::util::chain(&e)
            );
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = crate::plan::with_host_rules(
        nono_proxy::ProxyConfig {
            secret: args.secret.clone(),
            sandbox: "standalone".into(),
            ..args.proxy.into()
        },
        &host,
    );
    let sink = events::ProxySink::new(tx, out.takes_allowed());
    let running = nono_proxy::start(config, &args.listen, Arc::new(sink)).await?;
    for a in &running.addrs {
        eprintln!("nono-agent: proxy listening on {a}");
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(line) = rx.recv() => out.take(line),
        }
    }
    running.stop().await;
    while let Ok(line) = rx.try_recv() {
        out.take(line);
    }
    eprintln!("{}", out.summary.line("standalone", false));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reachable_listener_needs_a_secret() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        for open in ["0.0.0.0:3128", "[::]:3128", "198.51.100.1:3128"] {
            let e = check_listen(&[a("127.0.0.1:3128"), a(open)], None).unwrap_err();
            assert!(e.to_string().contains("give --secret"), "{open}: {e}");
            assert!(check_listen(&[a(open)], Some("s3cret")).is_ok());
        }
        assert!(check_listen(&[a("127.0.0.1:3128"), a("[::1]:3128")], None).is_ok());
    }
}
