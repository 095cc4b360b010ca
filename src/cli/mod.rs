//! The binary's modules: argument definitions and the gradient-health commands.

pub mod args;
pub mod bench;
pub mod health;
