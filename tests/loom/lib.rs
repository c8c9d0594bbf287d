//! loom harness for ron-transport's lock-free pieces: compiles `src/rate.rs` on its own (it
//! depends on nothing else in the crate) with `--cfg loom`, so its atomics are loom's and its
//! `loom_models` run under `loom::model`. Run with `.ci/loom`.
#![allow(dead_code)]

#[path = "../../src/rate.rs"]
pub mod rate;
