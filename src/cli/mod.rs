//! The binary's modules: argument definitions, the gradient-health commands and `bench`.

pub mod args;
pub mod bench;
pub mod health;
