//! The binary's modules: argument definitions, the gradient-health commands and `bench`.

pub mod args;
pub mod bench;
pub mod check;
pub mod checks;
pub mod data_args;
pub mod distributed;
pub mod experiment;
pub mod health;
pub mod inference;
pub mod mc;
pub mod schedule;
