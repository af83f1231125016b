//! # voxline-transports
//!
//! Transports connect a pipeline to the outside world.
