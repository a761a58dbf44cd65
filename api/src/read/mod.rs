//! The read side: what a read asks for ([`filter`], shared by searches, pages and the
//! tail), the pages it returns ([`page`]), the store read as one, rows and chunks
//! ([`shelf`], [`chunks`]), and which searches run ([`admission`]). The handlers that
//! use them are in `routes`; nothing here depends on them or on the api's
//! state.

pub mod admission;
mod chunks;
pub mod filter;
pub mod page;
pub mod shelf;
