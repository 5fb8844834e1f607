//! Decoding: from a coloured-overlay answer back to what an annotator exports.
//!
//! - [`parse`]: what an instruction asked for (family, targets, colours, keypoint names).
//! - [`color`]: colour names and hex codes.

pub mod color;
pub mod parse;
