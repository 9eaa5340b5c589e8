//! Property tests of the Istio YAML front-end (`routing::load_str`), and the
//! stable-Rust regression harness of the `yaml_front_end` fuzz target
//! (`routing/fuzz`): every file of its seed corpus runs through the same code
//! (`routing/fuzz/src/exercise.rs`, included below) on every `cargo test`.
//!
//! Properties (256 cases each unless `PROPTEST_CASES` is set; failure
//! persistence off, so nothing is written next to the sources):
//! - (a) generated *valid* configurations (services with VIPs, ports and
//!   protocols; workloads with labels and service accounts; DestinationRules
//!   with subsets and load-balancer policies; VirtualServices with uri /
//!   header / method / query matches and weighted routes to existing subsets),
//!   dealt into 1–3 files, always load, and `route()` on generated requests
//!   returns `Default`, `NoRoute` (only for services a VirtualService names) or
//!   a route whose every destination's cluster exists;
//! - (b) mutations of that YAML (truncation, deleted or duplicated lines,
//!   swapped characters, values replaced with garbage) never panic;
//! - (c) every load error names one of the loaded files (checked on every
//!   failed load here, and in a targeted property that must fail).

use proptest::prelude::*;
use proptest::sample::Index;
use routing::{load_str, RouteDecision, SimpleRequest, Snapshot};
use std::collections::BTreeSet;
use std::fmt::Write as _;

#[path = "../../fuzz/src/exercise.rs"]
mod exercise;

mod checks;
mod model;
mod mutations;
mod render;

use checks::*;
use model::*;
use mutations::*;
use render::*;

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 256;
    }
    c.failure_persistence = None;
    c
}
// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// (a) Generated valid configurations load, and routing them is sound.
    #[test]
    fn valid_configs_load_and_route(
        cfg in config_g(),
        reqs in prop::collection::vec(request_g(), 1..=4),
    ) {
        check_valid(&cfg, &reqs);
    }

    /// (b) + (c) Mutated YAML never panics; errors name a loaded file; a
    /// snapshot that still loads is driven like the fuzz target does.
    #[test]
    fn mutated_yaml_never_panics(
        cfg in config_g(),
        file in any::<Index>(),
        mutations in prop::collection::vec(mutation_g(), 1..=3),
    ) {
        let mut files = render(&cfg).files;
        let k = file.index(files.len());
        for m in &mutations {
            files[k].1 = mutate(&files[k].1, m);
        }
        let _ = exercise::check_load(&files);
    }

    /// (c) A config with one definitely invalid value fails, and the errors
    /// name loaded files, at least one the file that has the bad value.
    #[test]
    fn errors_name_the_file(
        cfg in config_g(),
        file in any::<Index>(),
        bad in prop_oneof![
            Just(("number: ", "0")),
            Just(("address: ", "not-an-ip")),
            Just(("number: ", "70000")),
        ],
    ) {
        let mut files = render(&cfg).files;
        // the first occurrence in some file that has one
        let start = file.index(files.len());
        let Some(k) = (0..files.len())
            .map(|j| (start + j) % files.len())
            .find(|j| files[*j].1.contains(bad.0)) else {
            return Ok(());
        };
        let t = &files[k].1;
        let at = t.find(bad.0).map(|p| p + bad.0.len()).unwrap_or(0);
        let end = t[at..].find(['\n', ',', '}']).map_or(t.len(), |e| at + e);
        files[k].1 = format!("{}{}{}", &t[..at], bad.1, &t[end..]);
        let name = files[k].0.clone();
        match load_str(&files, exercise::TRUST_DOMAIN) {
            Ok(_) => panic!("loaded with {}{} in {name}:\n{}", bad.0, bad.1, dump(&files)),
            Err(e) => {
                exercise::check_errors(&files, &e);
                prop_assert!(
                    e.iter().any(|x| x.at.file == name),
                    "no error names {}:\n{}", name, e
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The fuzz target's seed corpus, on stable
// ---------------------------------------------------------------------------

#[test]
fn fuzz_seed_corpus_runs_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/yaml_front_end");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    paths.sort();
    assert!(paths.len() >= 5, "seed corpus too small: {paths:?}");
    for p in paths {
        let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        exercise::exercise_bytes(&data);
    }
}

/// The bookinfo example, fully joined, loads: the seed corpus keeps a
/// loadable input (so the fuzzer starts from a snapshot that routes).
#[test]
fn fuzz_seed_bookinfo_all_loads() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus/yaml_front_end/bookinfo-all.yaml");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let files = vec![("bookinfo-all.yaml".to_string(), text)];
    let s = exercise::check_load(&files).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.services().count(), 3);
}
