//! `nono-agent selftest`: the escape battery built into the binary, so an
//! operator can check that a host really enforces, with every enforcer it
//! offers.
//!
//! * [`vectors`]: the one list of escape vectors (shared with the tests'
//!   probe and tables) and how each is judged; pure.
//! * [`probe`]: the attempts themselves, run inside a sandbox by the hidden
//!   `nono-agent __probe` (and by the tests' `nono-probe`).
//! * [`testhost`]: two private network namespaces and a veth pair with
//!   TEST-NET addresses, gone when selftest is.
//! * [`oracle`]: the receiving side (sniffer, listeners, ARP responder):
//!   what arrived decides, never what the probe says. [`frames`] parses
//!   what it captured; pure.
//! * [`report`]: verdicts, the table, the JSON and the exit code; pure.
//! * [`plan`]: what each phase attempts, with which port, id and tag; pure.
//! * [`phases`]: the phases' processes (baseline probe, `exec` sandboxes).
//! * [`seen`]: what arrived for one attempt, from the oracle.
//! * [`run`]: one run, tying them together.

pub mod frames;
pub mod oracle;
pub mod phases;
pub mod plan;
pub mod probe;
pub mod report;
pub mod run;
pub mod seen;
pub mod sockaddr;
pub mod testhost;
pub mod vectors;
