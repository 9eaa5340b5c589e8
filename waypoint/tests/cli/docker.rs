//! The files under `docker/`: the Dockerfile builds and ships the workspace's `waypoint` binary
//! (its shape, checked instruction by instruction), and its builder stage, replayed without a
//! container engine: exactly the paths its `COPY` lines name (less what `.dockerignore` keeps
//! out of the build context) go into an empty directory, where cargo must load the workspace
//! and check the package the Dockerfile builds. A workspace member the Dockerfile forgets, a
//! file a build script or an `include_str!` needs from outside the copied paths, or a lock file
//! out of date fails there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the waypoint crate sits in the workspace root")
        .to_path_buf()
}

/// One Dockerfile instruction: keyword and the rest, continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (kw, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((kw.to_ascii_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

/// `.dockerignore` as Docker reads it: one pattern per line relative to the context root, `*`
/// within a path component, `**` across them, `!` re-including; the last matching pattern
/// decides, and a path is excluded when it or a directory above it is.
struct DockerIgnore(Vec<(bool, globset::GlobMatcher)>);

impl DockerIgnore {
    fn matches(&self, path: &str) -> bool {
        let mut out = false;
        for (negate, glob) in &self.0 {
            if glob.is_match(path) {
                out = !negate;
            }
        }
        out
    }
}

fn ignored(path: &str, patterns: &DockerIgnore) -> bool {
    let mut prefix = String::new();
    path.split('/').any(|part| {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        patterns.matches(&prefix)
    })
}

fn dockerignore() -> DockerIgnore {
    let text = std::fs::read_to_string(repo_root().join(".dockerignore")).expect(".dockerignore");
    let patterns = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (negate, p) = match line.strip_prefix('!') {
                Some(p) => (true, p),
                None => (false, line),
            };
            let glob = globset::GlobBuilder::new(p.trim_start_matches('/').trim_end_matches('/'))
                .literal_separator(true)
                .build()
                .unwrap_or_else(|e| panic!(".dockerignore pattern {line:?}: {e}"));
            (negate, glob.compile_matcher())
        })
        .collect();
    DockerIgnore(patterns)
}

#[test]
fn dockerignore_excludes_target_and_git() {
    let patterns = dockerignore();
    for junk in [
        "target",
        "target/debug/waypoint",
        ".git",
        "routing/target",
        "routing/src/lib.rs.orig",
    ] {
        assert!(ignored(junk, &patterns), "{junk} is not excluded");
    }
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "waypoint/src/main.rs",
        "routing/src/lib.rs",
        "tests/Cargo.toml",
        "examples/bookinfo/services.yaml",
    ] {
        assert!(!ignored(needed, &patterns), "{needed} is excluded");
    }
}

fn version_tuple(v: &str) -> Vec<u32> {
    v.split('.')
        .map(|p| p.parse().expect("numeric version"))
        .collect()
}

#[test]
fn dockerfile_builds_and_ships_the_waypoint_binary() {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("docker/Dockerfile")).expect("docker/Dockerfile");
    let patterns = dockerignore();

    // Stages: (name, image, workdir, instructions).
    struct Stage {
        name: Option<String>,
        image: String,
        workdir: String,
        body: Vec<(String, String)>,
    }
    let mut stages: Vec<Stage> = Vec::new();
    for (kw, rest) in instructions(&text) {
        if stages.is_empty() && kw == "ARG" {
            continue; // global build arguments, expanded below
        }
        if kw == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let image = words
                .iter()
                .find(|w| !w.starts_with("--"))
                .unwrap()
                .to_string();
            let name = words
                .iter()
                .position(|w| w.eq_ignore_ascii_case("as"))
                .map(|i| words[i + 1].to_string());
            stages.push(Stage {
                name,
                image,
                workdir: "/".into(),
                body: Vec::new(),
            });
            continue;
        }
        let stage = stages.last_mut().expect("FROM first");
        if kw == "WORKDIR" {
            stage.workdir = rest.clone();
        }
        stage.body.push((kw, rest));
    }
    assert!(stages.len() >= 2, "multi-stage");

    // Builder: rust on bookworm, at least the workspace's rust-version; builds the binary.
    let args: BTreeMap<String, String> = instructions(&text)
        .into_iter()
        .filter(|(k, _)| k == "ARG")
        .filter_map(|(_, r)| r.split_once('=').map(|(k, v)| (k.into(), v.into())))
        .collect();
    let expand = |s: &str| {
        let mut s = s.to_string();
        for (k, v) in &args {
            s = s
                .replace(&format!("${{{k}}}"), v)
                .replace(&format!("${k}"), v);
        }
        s
    };
    let builder = stages
        .iter()
        .find(|s| {
            s.body
                .iter()
                .any(|(k, r)| k == "RUN" && r.contains("cargo build"))
        })
        .expect("a stage runs cargo build");
    let image = expand(&builder.image);
    let tag = image
        .strip_prefix("rust:")
        .and_then(|t| t.strip_suffix("-bookworm"))
        .unwrap_or_else(|| panic!("builder {image} is not rust:<version>-bookworm"));
    let workspace = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let msrv = workspace
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("workspace rust-version");
    assert!(
        version_tuple(tag) >= version_tuple(&msrv),
        "builder Rust {tag} is older than the workspace's rust-version {msrv}"
    );
    let build = builder
        .body
        .iter()
        .find(|(k, r)| k == "RUN" && r.contains("cargo build"))
        .map(|(_, r)| r.clone())
        .unwrap();
    let words: Vec<&str> = build.split_whitespace().collect();
    assert!(words.contains(&"--release"), "{build}");
    assert!(words.contains(&"--locked"), "{build}");
    assert!(
        words
            .windows(2)
            .any(|w| matches!(w[0], "-p" | "--package") && w[1] == "waypoint")
            || words.contains(&"--package=waypoint"),
        "{build} does not build the waypoint package"
    );
    assert!(
        !builder
            .body
            .iter()
            .any(|(k, r)| k == "ENV" && r.contains("CARGO_TARGET_DIR")),
        "the binary path below assumes the default target dir"
    );
    assert!(
        builder
            .body
            .iter()
            .any(|(k, r)| k == "RUN" && r.contains("cmake")),
        "pingora's build needs cmake"
    );
    let built = format!(
        "{}/target/release/waypoint",
        builder.workdir.trim_end_matches('/')
    );

    // Every COPY from the build context exists and is not excluded by .dockerignore.
    let mut copied_from_context = 0;
    for stage in &stages {
        for (kw, rest) in stage.body.iter().filter(|(k, _)| k == "COPY" || k == "ADD") {
            assert_eq!(kw, "COPY", "use COPY, not ADD");
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.iter().any(|w| w.starts_with("--from")) {
                continue;
            }
            let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
            assert!(paths.len() >= 2, "COPY {rest}");
            for src in &paths[..paths.len() - 1] {
                let src = src.trim_start_matches("./").trim_end_matches('/');
                assert!(root.join(src).exists(), "COPY source {src} does not exist");
                assert!(
                    !ignored(src, &patterns),
                    "COPY source {src} is in .dockerignore"
                );
                copied_from_context += 1;
            }
        }
    }
    assert!(copied_from_context > 0);
    // Runtime: distroless cc (Debian 12, like bookworm), only the binary, non-root.
    let runtime = stages.last().unwrap();
    assert_eq!(runtime.image, "gcr.io/distroless/cc-debian12:nonroot");
    let copies: Vec<&String> = runtime
        .body
        .iter()
        .filter(|(k, _)| k == "COPY")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "only the binary goes into the runtime image"
    );
    let words: Vec<&str> = copies[0].split_whitespace().collect();
    let from = words
        .iter()
        .find_map(|w| w.strip_prefix("--from="))
        .expect("COPY --from=<builder>");
    assert_eq!(
        Some(from),
        builder.name.as_deref(),
        "copied from the builder stage"
    );
    let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
    assert_eq!(paths, [built.as_str(), "/usr/local/bin/waypoint"]);
    let last = |kw: &str| {
        runtime
            .body
            .iter()
            .rev()
            .find(|(k, _)| k == kw)
            .map(|(_, r)| r.as_str())
    };
    assert_eq!(last("USER"), Some("65532:65532"));
    assert_eq!(last("ENTRYPOINT"), Some(r#"["/usr/local/bin/waypoint"]"#));
    assert_eq!(last("CMD"), Some(r#"["run"]"#));
    let exposed: Vec<&str> = last("EXPOSE")
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(exposed, ["15008", "15020", "15021"]);
    assert!(
        stages
            .iter()
            .all(|s| s.body.iter().all(|(k, _)| k != "HEALTHCHECK")),
        "no HEALTHCHECK (Kubernetes probes /healthz/ready)"
    );
}

/// The builder stage's instructions (from `FROM … AS builder` to the next `FROM`).
fn builder_stage(dockerfile: &str) -> Vec<(String, String)> {
    let mut stage = Vec::new();
    let mut inside = false;
    for (kw, rest) in instructions(dockerfile) {
        if kw == "FROM" {
            inside = rest.to_ascii_lowercase().ends_with(" as builder");
        } else if inside {
            stage.push((kw, rest));
        }
    }
    stage
}

/// Copy `rel` (a file or a directory, relative to `root`) to `dst`, less ignored paths.
fn copy(root: &Path, rel: &Path, dst: &Path, ignore: &DockerIgnore) {
    if ignored(&rel.to_string_lossy(), ignore) {
        return;
    }
    let src = root.join(rel);
    if src.is_dir() {
        std::fs::create_dir_all(dst).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = entry.unwrap().file_name();
            copy(root, &rel.join(&name), &dst.join(&name), ignore);
        }
    } else {
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
    }
}

/// This machine's target triple, as rustc reports it.
fn host_triple() -> String {
    let out = Command::new("rustc").arg("-vV").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

#[test]
fn dockerfile_builder_stage_builds_from_exactly_what_it_copies() {
    let root = repo_root();
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    let stage = builder_stage(&dockerfile);
    assert!(!stage.is_empty(), "no builder stage in docker/Dockerfile");
    let ignore = dockerignore();
    let context = std::env::temp_dir().join(format!("waypoint-docker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&context);
    let workdir = context.join("src");
    std::fs::create_dir_all(&workdir).unwrap();
    for (_, line) in stage.iter().filter(|(k, _)| k == "COPY") {
        let args: Vec<&str> = line.split_whitespace().collect();
        assert!(
            !args[0].starts_with("--"),
            "COPY flags are not replayed: {line}"
        );
        let (dest, sources) = args.split_last().unwrap();
        let into_dir = dest.ends_with('/') || sources.len() > 1;
        for src in sources {
            let rel = Path::new(src);
            let to = if into_dir {
                workdir.join(dest).join(rel.file_name().unwrap())
            } else {
                workdir.join(dest)
            };
            copy(&root, rel, &to, &ignore);
        }
    }
    // The cargo invocation of the stage's RUN line, as a check (no code generation).
    let build = stage
        .iter()
        .find_map(|(k, l)| {
            (k == "RUN")
                .then(|| {
                    l.split_once("cargo build ")
                        .map(|(_, rest)| rest.to_string())
                })
                .flatten()
        })
        .expect("the builder stage runs cargo build");
    let check_args: Vec<&str> = build
        .split_whitespace()
        .filter(|a| *a != "--release")
        .collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = |args: &[&str]| {
        let out = Command::new(&cargo)
            .args(args)
            // Every package is in this machine's cargo home already (the tests were built).
            .arg("--offline")
            .current_dir(&workdir)
            .env("CARGO_TARGET_DIR", context.join("target"))
            .env_remove("RUSTFLAGS")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cargo {args:?} in the replayed build context failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let metadata: serde_json::Value = serde_json::from_str(&run(&[
        "metadata",
        "--locked",
        "--format-version",
        "1",
        "--no-deps",
    ]))
    .unwrap();
    let members = metadata["workspace_members"].as_array().unwrap().len();
    assert_eq!(members, 4, "routing, xds-client, waypoint, tests");
    // What a build on this platform resolves and downloads, dev-dependencies included.
    run(&[
        "metadata",
        "--locked",
        "--format-version",
        "1",
        "--filter-platform",
        &host_triple(),
    ]);
    let mut check = vec!["check"];
    check.extend(check_args.iter().copied());
    run(&check);
    let _ = std::fs::remove_dir_all(&context);
}
