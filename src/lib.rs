//! sluice: a reverse proxy that makes releases safe.
//!
//! The data plane ([`proxy`]) forwards requests using an immutable routing
//! [`table`] that the control plane ([`control`]) swaps atomically; every
//! request's outcome is measured inline ([`stats`]). The binary in
//! `src/main.rs` is a thin shell over [`server::start`].
//!
//! # Layout
//!
//! From the face inwards (`docs/architecture.md` draws the layers):
//!
//! - the face: `main.rs` (the command line), [`ctl`] (`sluice ctl`),
//!   [`demo`] (`sluice demo`), [`server`] (starting and stopping a whole
//!   sluice, for the binary and the tests alike);
//! - control: [`admin`] (the admin API and dashboard), [`rollout`] (plans,
//!   gates, the controller per route, fleets), [`reload`] (the config
//!   file's watch), [`control`] (the one writer of the table), with
//!   [`journal`] and [`state`] (what survives a restart);
//! - the data plane: [`proxy`] (listeners, connections, the request
//!   service), [`upstream`] (pools and the client side to backends),
//!   [`body`] (request and response bodies on the path), [`access_log`];
//! - the table: [`table`], compiled from a validated [`config`] and read
//!   with one atomic load per request, over [`shared_vec`];
//! - leaves: [`split`] (backend choice), [`stats`] (windows and
//!   Prometheus), [`clock`], [`worker`], [`memory`] (the allocator).

// Two exceptions: `memory` (the global allocator and `trim`, calls into
// mimalloc) and `proxy::http1::client_closed` (a peek at a socket hyper
// owns).
#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod clock;
pub mod config;
pub mod control;
pub mod ctl;
pub mod demo;
pub mod headers;
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
pub mod target;
pub mod tls;
pub mod upstream;
pub mod worker;
