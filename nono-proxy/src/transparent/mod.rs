//! Transparent mode's proxy side (issue 14): connections the kernel
//! redirected to the proxy without the client knowing. [`peek`] reads what
//! the first bytes say, [`decide`] turns that and the dialled address into
//! the target the ordinary rules then judge.

pub mod decide;
pub mod http1;
pub mod peek;
pub mod server;

pub use decide::{destination, Destination, NameSource, NoTarget};
pub use peek::{peek, Peeked, MAX_PEEK};
pub use server::OriginalDst;
