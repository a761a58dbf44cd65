//! The read side: what a read asks for ([`filter`]), the pages it returns ([`page`]), the
//! store read as one, rows and chunks ([`shelf`], [`chunks`]), and the handlers of a
//! device's, service's or trace's logs ([`logs`]) and of searches ([`search`]), which
//! run as [`admission`] lets them.

pub mod admission;
mod chunks;
pub mod filter;
pub mod logs;
pub mod page;
pub mod search;
pub mod shelf;
