//! The release binary's hot code first in `.text` (see `link/hot_code.rs`).

#[path = "link/hot_code.rs"]
mod hot_code;

fn main() {
    const FILE: &str = "link/hot-code.txt";
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link/hot_code.rs");
    println!("cargo:rerun-if-changed={FILE}");
    println!("cargo:rerun-if-env-changed=WAYPOINT_HOT_CODE");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let target = env("TARGET");
    let rustc = std::process::Command::new(env("RUSTC"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let linker_var = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace('-', "_")
    );
    println!("cargo:rerun-if-env-changed={linker_var}");
    let switch = std::env::var("WAYPOINT_HOT_CODE").ok();
    let build = hot_code::Build {
        profile: &env("PROFILE"),
        target: &target,
        rustc: &rustc,
        other_linker: std::env::var_os(&linker_var).is_some()
            || env("CARGO_ENCODED_RUSTFLAGS")
                .split('\u{1f}')
                .any(|f| f.contains("linker") || f.contains("fuse-ld")),
        switch: switch.as_deref(),
    };
    let path = format!("{}/{FILE}", env("CARGO_MANIFEST_DIR"));
    // lld fails the link on a list it cannot open: without one, the layout is left out.
    let list = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"));
    match list.and_then(|text| hot_code::link_args(&build, &path).map(|args| (text, args))) {
        Ok((text, args)) => {
            match hot_code::made_with(&text) {
                Some(made) if made == rustc => {}
                made => println!(
                    "cargo:warning={FILE} lists the symbols of {}, not of {rustc}: most are skipped \
                     and the hot code is not placed first; make it again with \
                     waypoint/link/hot-code.sh",
                    made.unwrap_or("an unnamed compiler")
                ),
            }
            for arg in args {
                println!("cargo:rustc-link-arg-bin=waypoint={arg}");
            }
        }
        Err(why) if build.profile == "release" => {
            println!("cargo:warning=the hot code is not placed first: {why}")
        }
        Err(_) => {}
    }
}
