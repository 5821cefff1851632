//! vitnas: transformer architecture search with weight-sharing supernets.
//!
//! Data flows one way: [`space`] (search spaces, architectures, cost) →
//! [`supernet`] (elastic layers, weight entanglement) → [`models`] (static
//! subnets). See the repository README for the commands.

pub mod allocator;
pub mod bench;
pub mod data;
pub mod engine;
pub mod error;
pub mod eval;
pub mod hub;
pub mod init;
pub mod kernels;
pub mod models;
pub mod ops;
pub mod rank;
pub mod rundir;
pub mod search;
pub mod space;
pub mod supernet;
pub mod threads;
pub mod train;

pub use error::{Error, Result};
pub use space::{Arch, Space};
pub use supernet::Supernet;
