//! sluice: a reverse proxy that makes releases safe.
//!
//! The data plane ([`proxy`]) forwards requests using an immutable routing
//! [`table`] that the control plane ([`control`]) swaps atomically; every
//! request's outcome is measured inline ([`stats`]). The binary in
//! `src/main.rs` is a thin shell over [`server::start`].

// Two exceptions: `memory` (the global allocator and `trim`, calls into
// mimalloc) and `proxy::http1::client_closed` (a peek at a socket hyper
// owns).
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod clock;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod journal;
pub mod memory;
pub mod proxy;
pub mod reload;
pub mod rollout;
pub mod server;
pub mod shared_vec;
pub mod split;
pub mod state;
pub mod stats;
pub mod table;
pub mod upstream;
pub mod worker;
