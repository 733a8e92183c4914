#![no_std]
// This lib exists so that tls-probe can name this crate as a build-dependency and be rebuilt
// when it changes; the programs live in the binary target (src/main.rs).
