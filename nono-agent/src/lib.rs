//! nono-agent as a library: the command line (`cli`) is turned into a plan
//! (`plan`), an enforcer is chosen and applied (`enforcer`, `bpf`,
//! `seccomp`), the sandbox is built and torn down (`sandbox`), and what
//! happened is reported (`events`). `commands` holds one module per
//! subcommand; the binary (`main.rs`) only calls `commands::run`.

pub mod cli;
pub mod commands;
pub mod config;
pub mod creds;
pub mod daemon;
pub mod enforcer;
pub mod events;
pub mod learn;
pub mod mountinfo;
pub mod notice;
pub mod plan;
pub mod profile;
pub mod sandbox;
pub mod selftest;
pub mod signals;
pub mod timing;
pub mod transparent;
pub mod util;
pub mod why;
