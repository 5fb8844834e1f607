//! Sampling: noise schedules, denoisers, guidance, samplers, previews and the edit pipeline.
//!
//! Shaped after k-diffusion: the UNet becomes a [`denoiser::Denoiser`] returning x0,
//! [`guidance`] wraps it with the two classifier-free guidance formulas, and each sampler in
//! [`samplers`] is one short function over a sigma sequence from [`schedule`].

pub mod denoiser;
pub mod guidance;
pub mod noise;
pub mod pipeline;
pub mod preview;
pub mod request;
pub mod samplers;
pub mod schedule;
pub mod steps;
pub mod tiled;
