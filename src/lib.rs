//! Candor's nodes and their configuration, as the `candor` binary, the
//! tests and the benchmarks all start them: [`config`] reads one typed
//! configuration, [`node`] builds every node from it.

pub mod config;
pub mod node;
