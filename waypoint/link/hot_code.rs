//! Whether the release binary is linked with its hot code first, and with which linker
//! arguments. Shared by `build.rs` and the waypoint's lib tests (`src/lib.rs` includes it under
//! `cfg(test)`), so the decision is tested where the build cannot be.
//!
//! The waypoint's `.text` is about 26 MiB, and the kernel maps code 64 KiB around each page that
//! runs (fault-around), so the functions a serving waypoint runs (about 2 MiB of them), spread
//! over it, kept 10–11 MiB of it resident. `hot-code.txt` lists them (`hot-code.sh` makes it
//! from `datapath_bench` under callgrind); lld's `--symbol-ordering-file` places them first,
//! together.

/// What the build script knows about the build.
#[derive(Debug, Clone, Copy)]
pub struct Build<'a> {
    /// Cargo's `PROFILE` (`release` for `--release` and every profile inheriting it).
    pub profile: &'a str,
    /// Cargo's `TARGET`.
    pub target: &'a str,
    /// `rustc --version`'s first line.
    pub rustc: &'a str,
    /// Whether a linker other than the target's default was asked for (a `-C linker…` or
    /// `-fuse-ld=…` flag in `CARGO_ENCODED_RUSTFLAGS`, or `CARGO_TARGET_<TRIPLE>_LINKER`).
    pub other_linker: bool,
    /// `WAYPOINT_HOT_CODE`, when set.
    pub switch: Option<&'a str>,
}

/// The linker arguments that place `file`'s symbols first, or why there are none.
pub fn link_args(build: &Build<'_>, file: &str) -> Result<Vec<String>, String> {
    match build.switch {
        Some("0" | "off" | "false") => return Err("WAYPOINT_HOT_CODE turns it off".into()),
        Some("1" | "on" | "true") | None => {}
        Some(other) => {
            return Err(format!(
                "WAYPOINT_HOT_CODE={other:?} is neither on nor off: left off"
            ))
        }
    }
    if build.profile != "release" {
        return Err(format!("profile {:?}: only release builds", build.profile));
    }
    if build.target != "x86_64-unknown-linux-gnu" {
        return Err(format!(
            "target {}: its default linker may not be lld",
            build.target
        ));
    }
    match rustc_minor(build.rustc) {
        Some(minor) if minor >= 90 => {}
        _ => {
            return Err(format!(
                "{:?}: rustc links with lld by default from 1.90 on",
                build.rustc
            ))
        }
    }
    if build.other_linker {
        return Err("another linker was asked for, which may not be lld".into());
    }
    Ok(vec![
        format!("-Wl,--symbol-ordering-file={file}"),
        // A symbol the build does not have (another toolchain's hash, a function since
        // renamed or inlined) is skipped, without a warning each.
        "-Wl,--no-warn-symbol-ordering".into(),
    ])
}

/// The minor version of `rustc 1.N.P (…)`.
fn rustc_minor(version: &str) -> Option<u32> {
    let number = version.strip_prefix("rustc ")?.split_whitespace().next()?;
    let mut parts = number.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}

/// The `# rustc …` line of an ordering file: the compiler whose symbols it lists.
pub fn made_with(file_text: &str) -> Option<&str> {
    file_text
        .lines()
        .find_map(|l| l.strip_prefix("# ").filter(|v| v.starts_with("rustc ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("hot-code.txt");

    fn release() -> Build<'static> {
        Build {
            profile: "release",
            target: "x86_64-unknown-linux-gnu",
            rustc: "rustc 1.95.0 (59807616e 2026-04-14)",
            other_linker: false,
            switch: None,
        }
    }

    #[test]
    fn a_release_build_on_x86_64_linux_orders_its_code() {
        let args = link_args(&release(), "/src/waypoint/link/hot-code.txt").unwrap();
        assert_eq!(
            args,
            [
                "-Wl,--symbol-ordering-file=/src/waypoint/link/hot-code.txt",
                "-Wl,--no-warn-symbol-ordering"
            ]
        );
        let on = Build {
            switch: Some("on"),
            ..release()
        };
        assert!(link_args(&on, "f").is_ok());
    }

    #[test]
    fn builds_whose_linker_may_not_be_lld_are_left_alone() {
        let cases = [
            (
                Build {
                    profile: "debug",
                    ..release()
                },
                "only release",
            ),
            (
                Build {
                    target: "aarch64-unknown-linux-gnu",
                    ..release()
                },
                "may not be lld",
            ),
            (
                Build {
                    rustc: "rustc 1.89.0 (29483883e 2025-08-04)",
                    ..release()
                },
                "from 1.90 on",
            ),
            (
                Build {
                    rustc: "",
                    ..release()
                },
                "from 1.90 on",
            ),
            (
                Build {
                    other_linker: true,
                    ..release()
                },
                "another linker",
            ),
            (
                Build {
                    switch: Some("off"),
                    ..release()
                },
                "turns it off",
            ),
            (
                Build {
                    switch: Some("yes please"),
                    ..release()
                },
                "neither on nor off",
            ),
        ];
        for (build, why) in cases {
            let err = link_args(&build, "f").unwrap_err();
            assert!(err.contains(why), "{build:?}: {err}");
        }
    }

    #[test]
    fn the_shipped_order_names_its_compiler_and_lists_each_symbol_once() {
        let made = made_with(SHIPPED).expect("a `# rustc …` line");
        assert!(rustc_minor(made).is_some_and(|m| m >= 90), "{made}");
        let symbols: Vec<&str> = SHIPPED.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(symbols.len() > 100, "{} symbols", symbols.len());
        let mut seen = std::collections::HashSet::new();
        for s in &symbols {
            // One symbol per line, as lld reads them: Rust's mangled (legacy `_ZN…E`, v0 `_R…`)
            // and C's (jemalloc, ring's assembly), never a demangled name.
            assert!(
                !s.contains(char::is_whitespace) && !s.contains("::"),
                "{s:?}"
            );
            assert!(seen.insert(s), "{s} listed twice");
        }
        // The request path is among them: pingora's request loop, the waypoint's hooks and the
        // allocator.
        for part in ["process_request", "request_filter", "_rjem_malloc"] {
            assert!(symbols.iter().any(|s| s.contains(part)), "{part}");
        }
    }
}
