//! File formats for annotations: COCO run-length encoding ([`rle`]) and COCO JSON ([`coco`]).

pub mod coco;
pub mod rle;
