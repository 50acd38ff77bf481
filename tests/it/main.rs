//! Integration tests: the real flaghook binary in front of a real Flagr, with real receivers.
//! Everything under `with_flagr::` needs a Flagr binary (see `support::flagr_bin`).

// Tests talk to real processes on the wall clock, and a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::disallowed_types, unreachable_pub)]

mod parts;
mod support;

mod with_flagr {
    mod admin;
    mod cluster;
    mod durability;
    mod events;
    mod faults;
    mod gitsync;
    mod impressions;
    mod packaging;
    mod page;
    mod prometheus;
    mod proxy;
}
mod faults;
mod standalone;
mod tooling;
