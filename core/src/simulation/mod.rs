//! Deterministic simulations of the core under seeded schedules: every
//! run draws its world and its schedule from one seed, checks invariants
//! after each step, and a failing seed prints itself and replays with
//! `SIM_SEED=<seed>` (`SIM_SEEDS=<n>` runs more). Test-only.
//!
//! - [`follow`]: nodes following a fake Redis ([`broker`]) through
//!   outages, late replies, trims and flushes.

mod broker;
mod follow;
mod rng;
