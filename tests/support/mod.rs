//! Helpers shared by integration tests.
pub mod cluster;
pub mod services;
pub mod ws;
