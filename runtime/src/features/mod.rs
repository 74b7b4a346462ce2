//! What is built on the [`Locker`](crate::Locker): fleet-wide limits, leader
//! election, the names of annotated keys, and the status view.

pub(crate) mod leader;
pub(crate) mod limit;
pub mod names;
pub mod status;
