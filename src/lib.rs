//! vitnas: transformer architecture search with weight-sharing supernets.
//!
//! Data flows one way: [`space`] (search spaces, architectures, cost) →
//! [`supernet`] (elastic layers, weight entanglement) → [`train`] (recipes,
//! samplers, losses, checkpoints) → [`search`] → [`models`] (static subnets,
//! export). [`engine`] runs forward and backward of any subnet on the CPU;
//! [`rank`] measures how well a supernet ranks architectures. See the
//! repository README for the commands.
//!
//! The public surface, twelve modules: [`space`], [`supernet`] (with its
//! seeded initialisation, [`supernet::init`]), [`train`] (with run
//! directories, evaluation and accuracy predictors), [`search`],
//! [`latency`], [`models`] and [`hub`] (export and loading), [`rank`],
//! [`engine`] (its [`engine::Model`] for inference, its step functions for
//! training, the differentiable ops in [`engine::ops`]), [`data`], [`dist`]
//! and [`error`]. The fused CPU kernels and the low file I/O are private.
//!
//! Build a space, sample an architecture, run it in the supernet, extract
//! it as a standalone model that gives the same logits:
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarMap;
//! use rand::{rngs::StdRng, SeedableRng};
//! use vitnas::supernet::init::{seeded_var_builder, InitScheme};
//! use vitnas::{Space, Supernet};
//!
//! # fn main() -> vitnas::Result<()> {
//! let space = Space::from_toml_str(
//!     r#"
//!     name = "tiny"
//!     [input]
//!     image_size = 28
//!     patch_size = 7
//!     channels = 1
//!     num_classes = 10
//!     [supernet]
//!     embed_dim = 64
//!     depth = 3
//!     num_heads = 4
//!     mlp_ratio = 4.0
//!     head_dim = 16
//!     [choices]
//!     embed_dim = [32, 64]
//!     depth = [2, 3]
//!     num_heads = [2, 4]
//!     mlp_ratio = [2.0, 4.0]
//!     "#,
//!     "tiny.toml",
//! )?;
//! let arch = space.sample(&mut StdRng::seed_from_u64(0));
//! let vars = VarMap::new();
//! let vb = seeded_var_builder(&vars, 0, DType::F32, &Device::Cpu);
//! let net = Supernet::with_init(&space, InitScheme::TorchDefault, vb)?;
//!
//! let images = Tensor::rand(0f32, 1.0, (2, 1, 28, 28), &Device::Cpu)?;
//! let logits = net.forward(&images, &arch, false)?;
//! assert_eq!(logits.dims(), &[2, 10]);
//!
//! let subnet = net.extract(&arch)?; // a plain ViT, no supernet code
//! let diff = (subnet.forward(&images)? - &logits)?.abs()?.max_all()?;
//! assert!(diff.to_scalar::<f32>()? < 1e-4);
//! # Ok(())
//! # }
//! ```

pub mod data;
pub mod dist;
pub mod engine;
pub mod error;
pub mod hub;
mod io;
mod kernels;
pub mod latency;
pub mod models;
pub mod rank;
pub mod search;
pub mod space;
mod stats;
pub mod supernet;
pub mod train;

pub use error::{Error, Result};
pub use space::{Arch, Space};
pub use supernet::Supernet;
