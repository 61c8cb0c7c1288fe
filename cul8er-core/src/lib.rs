//! The cul8er library: topologies, the planner, the executor and rollouts.
//!
//! It never prints and never exits; the `cul8er` binary is a thin shell over it.

pub mod release;
pub mod topology;
