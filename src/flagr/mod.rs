//! Flagr: its route table, its data model, and the small API client flaghook uses to read state.
//!
//! In: requests' method and path; JSON from Flagr. Out: routes, typed flags, snapshots.
//! Never: writes to Flagr (git sync goes through the proxy, like any client).

pub mod client;
pub mod known;
pub mod model;
pub mod routes;

pub use client::FlagrClient;
pub use known::{Known, KnownFlags};
pub use model::{Flag, FlagState, ListedFlag, Snapshot};
pub use routes::{Evaluation, Mutation, Route, RouteTable};
