//! The simulated network the simulation tests share.
#![allow(dead_code)]

pub mod net;
