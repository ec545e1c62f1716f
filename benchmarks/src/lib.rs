//! Simulated agents and benchmarks for Candor. Nothing here ships in the
//! product: the crate exists to drive the product the way real agents do.

pub mod agents;
