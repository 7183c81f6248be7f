//! Load: many concurrent tunnels, events not lost at exit.

use std::time::{Duration, Instant};

use serde_json::Value;

use nono_tests::proxylab::{proxy_events, ProxyLab, Sandbox, ECHO_PORT, HOLD_PORT};

#[test]
fn a_thousand_concurrent_tunnels() {
    let lab = ProxyLab::new();
    let events = lab.tmp.path("tunnels.jsonl");
    let rule = format!("echo.test:{ECHO_PORT}");
    let sb = Sandbox::allow(&[&rule]).events(&events);
    let started = Instant::now();
    let (v, out) = lab.python_timeout(
        &sb,
        &["tunnels", "1000", "echo.test", &ECHO_PORT.to_string(), "2"],
        Duration::from_secs(240),
    );
    let took = started.elapsed();
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(
        v["failure_count"], 0,
        "tunnels failed ({took:?}): {v:#}\n{}",
        out.stderr
    );
    assert_eq!(v["ok"], 1000, "{v:#}");
    assert_eq!(
        v["open_at_once"], 1000,
        "all tunnels must be open at the same time: {v:#}"
    );
    assert_eq!(lab.echo_connections(), 1000, "echo server connections");
    let ev = proxy_events(&events);
    let allowed: Vec<&Value> = ev
        .iter()
        .filter(|e| e["hook"] == "connect" && e["verdict"] == "allow" && e["host"] == "echo.test")
        .collect();
    assert_eq!(
        allowed.len(),
        1000,
        "one allow event per tunnel; got {} ({} events in all)",
        allowed.len(),
        ev.len()
    );
    let bytes_up: u64 = allowed
        .iter()
        .map(|e| e["bytes_up"].as_u64().unwrap_or(0))
        .sum();
    let bytes_down: u64 = allowed
        .iter()
        .map(|e| e["bytes_down"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(bytes_up, v["bytes"].as_u64().unwrap(), "bytes_up in events");
    assert_eq!(
        bytes_down,
        v["bytes"].as_u64().unwrap(),
        "bytes_down in events"
    );
}

/// Every tunnel gets its event, also one still open (or still closing) when
/// the command exits: (1) a tunnel whose server keeps the connection open
/// after the command is gone; (2) 1000 tunnels closed just before the command
/// exits.
#[test]
fn tunnel_events_are_not_lost_when_the_command_exits() {
    let lab = ProxyLab::new();
    let mut bad = Vec::new();

    let events = lab.tmp.path("exit-hold.jsonl");
    let rule = format!("echo.test:{HOLD_PORT}");
    let sb = Sandbox::allow(&[&rule]).events(&events);
    let (v, out) = lab.python(
        &sb,
        &["tunnels", "1", "echo.test", &HOLD_PORT.to_string(), "0"],
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(v["ok"], 1, "{v:#}");
    let n = proxy_events(&events).len();
    if n != 1 {
        bad.push(format!(
            "a tunnel still open when the command exited: {n} events (expected 1)"
        ));
    }

    let events = lab.tmp.path("exit-1000.jsonl");
    let rule = format!("echo.test:{ECHO_PORT}");
    let sb = Sandbox::allow(&[&rule]).events(&events);
    let (v, out) = lab.python_timeout(
        &sb,
        &["tunnels", "1000", "echo.test", &ECHO_PORT.to_string(), "0"],
        Duration::from_secs(120),
    );
    assert_eq!(out.code(), 0, "{}", out.describe());
    assert_eq!(v["ok"], 1000, "{v:#}");
    let n = proxy_events(&events)
        .iter()
        .filter(|e| e["hook"] == "connect" && e["verdict"] == "allow")
        .count();
    if n != 1000 {
        bad.push(format!(
            "1000 tunnels closed right before the command exited: {n} allow events"
        ));
    }
    assert!(
        bad.is_empty(),
        "tunnel events lost at exit:\n  {}",
        bad.join("\n  ")
    );
}
