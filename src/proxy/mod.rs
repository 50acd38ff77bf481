//! The hot path: a transparent HTTP proxy in front of Flagr that taps the calls flaghook cares
//! about.
//!
//! In: client connections (HTTP/1.1, h2c). Out: Flagr's answers, unchanged, and for inspected
//! routes an [`Exchange`] on the tap channel.
//! Never: waits for derivation or delivery; a full tap channel drops the copy, not the request.

mod server;
mod service;
pub mod tap;

pub use server::serve;
pub use service::{error_response, strip_hop_by_hop, Proxy, ProxyBody};
pub use tap::{Captured, Exchange, TapSender};
