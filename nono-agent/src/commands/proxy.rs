//! `nono-agent proxy`: the filtering proxy on its own, until SIGINT/SIGTERM.

use anyhow::Result;
use tokio::signal::unix::{signal, SignalKind};

use std::sync::Arc;

use crate::cli::StandaloneProxyArgs;
use crate::events;

pub async fn run(args: StandaloneProxyArgs) -> Result<i32> {
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
    let running = nono_proxy::start(config, &args.listen, Arc::new(events::ProxySink(tx))).await?;
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
