//! What the simulation tests share: the simulated network, the stub portal
//! and the world that runs the real role machines on them.
#![allow(dead_code)]

pub mod net;
pub mod portal;
pub mod world;
