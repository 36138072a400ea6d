//! Staged rollouts: plans are judged by gates and smoke checks, and a
//! controller per route advances, holds or rolls back.

pub mod controller;
pub mod decide;
pub mod fleet;
pub mod gates;
pub mod prometheus;
pub mod report;
pub mod sequential;
pub mod smoke;
pub mod state;
