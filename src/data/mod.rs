//! Procedural training data: scenes of shapes and stick-figure people ([`scene`]) and, for
//! every task family of the paper, (source, instruction, target) samples built the way
//! InstructDiffusion builds its targets ([`sample`]).

pub mod color;
pub mod dataset;
pub mod degrade;
pub mod person;
pub mod sample;
pub mod scene;
