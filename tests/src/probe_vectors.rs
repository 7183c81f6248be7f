//! Every attempt and mode `nono-probe` knows: declared once in the agent's
//! library (`nono_agent::selftest::vectors`), which `nono-agent selftest`
//! runs too; re-exported here so `nono_tests::probe_vectors` paths stay.

pub use nono_agent::selftest::vectors::{UnknownVector, Vector};
