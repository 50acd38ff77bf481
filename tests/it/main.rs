//! Integration tests: the real flaghook binary in front of a real Flagr, with real receivers.

mod support;

mod events;
mod proxy;
