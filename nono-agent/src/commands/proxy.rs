//! `nono-agent proxy`: the filtering proxy on its own, until SIGINT/SIGTERM.

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::StandaloneProxyArgs;
use crate::proxy_config::ProxyRules;
use crate::{events, proxy};

pub async fn run(args: StandaloneProxyArgs) -> Result<i32> {
    let mut out = events::Output::open(args.events.as_deref())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let rules = ProxyRules::from(args.proxy);
    let state = rules
        .state(args.secret.clone(), "standalone", tx)
        .map_err(anyhow::Error::msg)?;
    let running = proxy::start(state, &args.listen).await?;
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
    eprintln!("{}", out.summary.line("standalone"));
    Ok(0)
}
