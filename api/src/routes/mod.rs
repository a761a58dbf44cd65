//! The read side's handlers: a device's, service's or trace's logs ([`logs`]),
//! fleet-wide searches and histograms ([`search`]), and the live tail ([`tail`]). They
//! read through the [`crate::read`] side (filters, pages, the shelf of rows and chunks,
//! the searches' admission) and the [`crate::tail`] hub, which depend on no handler.

pub mod logs;
pub mod search;
pub mod tail;
