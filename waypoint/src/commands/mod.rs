//! The commands (`run`, `demo`, `explain`, `validate`, `translate`, `manifest`, `certs`, `curl`)
//! and the clap command line. The library below never takes a clap struct; `demo`'s simulated
//! mesh (`sim`) lives here as product code the tests and benchmarks share.

pub mod certs;
pub mod cli;
pub mod curl;
pub mod demo;
pub mod demo_ui;
pub mod explain;
pub mod manifest;
pub mod output;
pub mod run;
pub mod run_args;
pub mod sim;
pub mod translate;
pub mod validate;
