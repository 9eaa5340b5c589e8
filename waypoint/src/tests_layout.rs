//! The layout rules of issue 14 ("the layout shows the layers"), checked on the workspace's
//! library sources: errors are typed (no `Result<_, String>`, no `anyhow` below the commands) and
//! no file is over 600 lines. Test code (`tests.rs`, `tests_*.rs`, `tests/`, `tests_*/` and `testing/`
//! folders, an inline `#[cfg(test)] mod`) is not held to the error rules.

use std::path::{Path, PathBuf};

/// The longest a source file may be.
const MAX_LINES: usize = 600;

/// The library crates' `src` folders, from this crate's manifest folder.
fn roots() -> Vec<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["src", "../routing/src", "../xds-client/src"]
        .iter()
        .map(|r| here.join(r))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `tests.rs`, `tests_*.rs`, or anything under a `tests*` or `testing` folder.
fn is_test_file(path: &Path) -> bool {
    path.components().any(|c| {
        let c = c.as_os_str().to_str().unwrap_or("");
        c == "tests.rs" || c.starts_with("tests_") || c == "tests" || c == "testing"
    })
}

/// The text before an inline test module, which starts at `#[cfg(test)]` then `mod`.
fn library_part(text: &str) -> &str {
    let mut at = 0;
    let mut lines = text.split_inclusive('\n').peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines.peek().is_some_and(|next| {
                next.trim_start().starts_with("mod ") && next.trim_end().ends_with('{')
            })
        {
            return &text[..at];
        }
        at += line.len();
    }
    text
}

/// Every `Result<…>` in `text` whose error type is `String`, as the text of its arguments.
fn string_errors(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("Result<") {
        let args = &rest[i + "Result<".len()..];
        let (mut depth, mut last_comma, mut end) = (0usize, None, None);
        for (j, c) in args.char_indices() {
            match c {
                '<' | '(' | '[' => depth += 1,
                ')' | ']' => depth = depth.saturating_sub(1),
                '>' if depth == 0 => {
                    end = Some(j);
                    break;
                }
                '>' => depth -= 1,
                ',' if depth == 0 => last_comma = Some(j),
                _ => {}
            }
        }
        if let (Some(end), Some(comma)) = (end, last_comma) {
            if args[comma + 1..end].trim() == "String" {
                found.push(args[..end].to_string());
            }
        }
        rest = args;
    }
    found
}

#[test]
fn string_errors_reads_generic_arguments() {
    assert_eq!(
        string_errors("fn f() -> Result<(u8, Vec<String>), String> {"),
        vec!["(u8, Vec<String>), String"]
    );
    assert_eq!(
        string_errors("fn g() -> std::result::Result<Arc<T>, String>;"),
        vec!["Arc<T>, String"]
    );
    assert!(string_errors("fn h() -> Result<HashMap<String, String>, E> {").is_empty());
    assert!(string_errors("fn i() -> Result<String, E> { Ok(String::new()) }").is_empty());
    assert!(string_errors("fn j() -> io::Result<String> {").is_empty());
}

#[test]
fn library_part_stops_at_the_inline_test_module() {
    let text = "#[cfg(test)]\nmod tests_a;\nfn a() {}\n#[cfg(test)]\nfn helper() {}\n#[cfg(test)]\nmod tests {\n}\n";
    assert_eq!(
        library_part(text),
        "#[cfg(test)]\nmod tests_a;\nfn a() {}\n#[cfg(test)]\nfn helper() {}\n"
    );
}

#[test]
fn library_errors_are_typed_and_files_are_short() {
    let mut files = Vec::new();
    for root in roots() {
        rust_files(&root, &mut files);
    }
    assert!(files.len() > 100, "found only {} source files", files.len());
    let mut problems = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("source file");
        let shown = path.display();
        let lines = text.lines().count();
        if lines > MAX_LINES {
            problems.push(format!("{shown}: {lines} lines (at most {MAX_LINES})"));
        }
        if is_test_file(path) {
            continue;
        }
        let library = library_part(&text);
        for args in string_errors(library) {
            problems.push(format!("{shown}: Result<{args}>: use a thiserror type"));
        }
        let commands = path.components().any(|c| c.as_os_str() == "commands");
        if !commands && library.contains("anyhow") {
            problems.push(format!(
                "{shown}: anyhow below the commands: use a thiserror type"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
