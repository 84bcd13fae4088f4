//! Helpers shared by integration tests.
pub mod services;
pub mod ws;
