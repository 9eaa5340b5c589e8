//! Reading configuration files: a directory's `*.yaml` / `*.yml`, or one file.

use crate::error::{DocRef, LoadError, LoadErrors};
use std::path::Path;

fn error(file: String, message: String) -> LoadErrors {
    LoadErrors(vec![LoadError {
        at: DocRef {
            file,
            ..DocRef::default()
        },
        field: None,
        message,
    }])
}

/// The file's name as documents are reported under (`bookinfo.yaml`).
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// `(file name, content)` of every `*.yaml` / `*.yml` file of `dir`, sorted
/// by name (not recursive).
pub(super) fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, LoadErrors> {
    let dir_err = |e: std::io::Error| {
        error(
            dir.display().to_string(),
            format!("cannot read directory: {e}"),
        )
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let path = entry.map_err(dir_err)?.path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if is_yaml && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((file_name(&path), text)),
            Err(e) => errors.extend(error(file_name(&path), format!("cannot read file: {e}")).0),
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    Ok(files)
}

/// `(file name, content)` of the one file `path`.
pub(super) fn read_file(path: &Path) -> Result<Vec<(String, String)>, LoadErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(vec![(file_name(path), text)]),
        Err(e) => Err(error(
            path.display().to_string(),
            format!("cannot read file: {e}"),
        )),
    }
}
