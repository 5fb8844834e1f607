//! instructdiffusion: every vision task as an instructional image edit (Geng et al., 2023),
//! in Rust on candle.
//!
//! - [`model`]: the networks (UNet, VAE, CLIP text encoder) and loading from every layout.
//! - [`sample`]: schedules, guidance, samplers and the edit pipeline.
//! - [`imageio`]: bounded image decoding, the resize rule, atomic writes.
//! - [`decode`]: coloured overlays back to masks, keypoints, boxes and labels.
//! - [`fullres`]: results at the photo's own resolution (redrawn, change, tiles).
//! - [`export`]: COCO, Labelme, PNG masks, YOLO.
//! - [`project`]: a folder of images as an annotation project (status and answer per image).
//! - [`annotate`]: one instruction over a folder into one COCO file.
//! - [`worker`]: the thread that owns the model and runs jobs for the UI.
//! - [`app`]: the desktop editor.
//! - [`cli`]: the `instructdiffusion` command.

pub mod annotate;
pub mod app;
pub mod bench;
pub mod cli;
pub mod data;
pub mod decode;
pub mod eval;
pub mod export;
pub mod fullres;
pub mod imageio;
pub mod model;
pub mod project;
pub mod sample;
pub mod settings;
pub mod support;
pub mod tasks;
pub mod train;
pub mod worker;

/// The library's own tests map weights too ([`model::load::mapped`]; the binary installs the
/// same allocator in `main.rs`).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: model::load::mapped::Allocator = model::load::mapped::Allocator;
