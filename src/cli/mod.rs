//! The binary's modules: argument definitions, the gradient-health commands and `bench`.

pub mod args;
pub mod bench;
pub mod checks;
pub mod experiment;
pub mod health;
pub mod mc;
pub mod schedule;
