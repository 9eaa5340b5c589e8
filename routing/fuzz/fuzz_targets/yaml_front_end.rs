//! Arbitrary bytes → `routing::load_str` (whole, and split into 1–3 files);
//! a snapshot that loads is routed, explained, picked from and dumped.
//! See `../src/exercise.rs`; `routing/tests/proptest_yaml/` runs the seed
//! corpus through the same code on stable.
#![no_main]

#[path = "../src/exercise.rs"]
mod exercise;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    exercise::exercise_bytes(data);
});
