//! The networks of InstructDiffusion and how their weights are found and loaded.
//!
//! One file per network (after candle-transformers): [`unet`], [`vae`], [`clip`], with their
//! building blocks; [`load`] turns a model source (diffusers folder, single LDM checkpoint, hub
//! id) into [`load::Model`]. Networks receive a `VarBuilder` and never open files.

pub mod attention;
pub mod clip;
pub mod embeddings;
pub mod load;
pub mod meta;
pub mod nn;
pub mod resnet;
pub mod unet;
pub mod unet_blocks;
pub mod vae;
