//! Static models: plain transformers with fixed shapes, loaded from exported
//! subnet directories or built by supernet extraction. No supernet code runs
//! in their forward.

pub mod export;
pub mod layers;
pub mod vit;
