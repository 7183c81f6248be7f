//! Empty library target: lets `nono-agent` name this crate as a build
//! dependency so cargo rebuilds the agent when the BPF programs change. The
//! programs themselves are the `nono` binary target, built for the BPF target.
#![no_std]
