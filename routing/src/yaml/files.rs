//! Reading configuration files: a directory's `*.yaml` / `*.yml`, or one file, within size
//! limits.
//!
//! Which entries of a directory count is decided here once, for the loader and for the
//! waypoint's watcher alike ([`config_entries`]): names ending in `.yaml` / `.yml` that do not
//! start with a dot. Dot entries are Kubernetes' ConfigMap machinery (`..data`,
//! `..2024_01_01_00_00_00.123`) or hidden files; a ConfigMap's keys are the visible symlinks
//! into `..data`, so nothing is loaded twice. An entry that is not a file (a directory named
//! `x.yaml`, a dangling symlink, a symlink loop, a FIFO) is not read: it is reported
//! ([`Unreadable`]) and the other files load. A regular file that cannot be read, is not UTF-8
//! or is over a limit fails the load (its policies must not silently disappear).

use crate::error::{DocRef, LoadError, LoadErrors, LoadWarning};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Default [`InputLimits::max_total_bytes`]: 64 MiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 64 << 20;
/// Default [`InputLimits::max_file_bytes`]: 16 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 << 20;

/// How much config input one load reads at most. Over a limit the load fails with an error
/// naming the file (nothing is read past it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// All files of a directory together.
    pub max_total_bytes: u64,
    /// One file.
    pub max_file_bytes: u64,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// One config entry of a directory, as [`config_entries`] found it.
#[derive(Debug)]
pub enum ConfigEntry {
    /// A regular file (symlinks followed), with its metadata.
    File {
        name: String,
        path: PathBuf,
        metadata: std::fs::Metadata,
    },
    /// An entry named like config that cannot be read as a file.
    Unreadable(Unreadable),
}

/// A `*.yaml` entry that is not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Unreadable {
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// The files of a directory that one load reads.
#[derive(Debug, Default)]
pub struct ConfigFiles {
    /// `(file name, content)`, sorted by name.
    pub files: Vec<(String, String)>,
    /// Entries named like config that are not files.
    pub unreadable: Vec<Unreadable>,
}

/// Why reading config input failed.
#[derive(Debug)]
pub enum ReadError {
    /// The operating system refused a read (`file` names what); may be temporary (EMFILE).
    Io { file: String, error: std::io::Error },
    /// The input itself is unusable (over a limit, not UTF-8).
    Invalid(LoadErrors),
}

impl From<ReadError> for LoadErrors {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io { file, error } => error_at(file, format!("cannot read: {error}")),
            ReadError::Invalid(errors) => errors,
        }
    }
}

fn error_at(file: String, message: String) -> LoadErrors {
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

/// Whether a directory entry named `name` is config: `*.yaml` / `*.yml`, not a dot entry.
pub fn is_config_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The config entries of `dir` (not recursive), sorted by name. Errors are the directory's
/// own (it cannot be listed).
pub fn config_entries(dir: &Path) -> std::io::Result<Vec<ConfigEntry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_config_name(&name) {
            continue;
        }
        let path = entry.path();
        let unreadable = |reason: String| {
            ConfigEntry::Unreadable(Unreadable {
                name: name.clone(),
                reason,
            })
        };
        out.push(match std::fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => ConfigEntry::File {
                name,
                path,
                metadata,
            },
            Ok(m) if m.is_dir() => unreadable("is a directory, not a file".into()),
            Ok(_) => unreadable("is not a regular file".into()),
            Err(e) => match std::fs::symlink_metadata(&path) {
                Ok(link) if link.file_type().is_symlink() => {
                    let target = std::fs::read_link(&path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|_| "?".into());
                    if e.kind() == std::io::ErrorKind::NotFound {
                        unreadable(format!("dangling symlink to {target}"))
                    } else {
                        unreadable(format!("symlink to {target} cannot be followed: {e}"))
                    }
                }
                // Removed since the listing: not there.
                Err(gone) if gone.kind() == std::io::ErrorKind::NotFound => continue,
                _ => return Err(e),
            },
        });
    }
    out.sort_by(|a, b| entry_name(a).cmp(entry_name(b)));
    Ok(out)
}

fn entry_name(e: &ConfigEntry) -> &str {
    match e {
        ConfigEntry::File { name, .. } => name,
        ConfigEntry::Unreadable(u) => &u.name,
    }
}

fn over_file_limit(name: &str, size: u64, limits: &InputLimits) -> ReadError {
    ReadError::Invalid(error_at(
        name.to_string(),
        format!(
            "file is {size} bytes, over the limit of {} bytes per config file \
             (--config-max-file-bytes)",
            limits.max_file_bytes
        ),
    ))
}

/// Read one file of at most `limits.max_file_bytes` (checked before and while reading, so a
/// file growing meanwhile cannot make it read more).
fn read_limited(path: &Path, name: &str, limits: &InputLimits) -> Result<String, ReadError> {
    let io = |error| ReadError::Io {
        file: name.to_string(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limits.max_file_bytes {
        return Err(over_file_limit(name, size, limits));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limits.max_file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(over_file_limit(name, bytes.len() as u64, limits));
    }
    String::from_utf8(bytes).map_err(|e| {
        ReadError::Invalid(error_at(
            name.to_string(),
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

/// The config files of `dir`, within `limits`.
pub fn read_config_dir(dir: &Path, limits: &InputLimits) -> Result<ConfigFiles, ReadError> {
    let entries = config_entries(dir).map_err(|error| ReadError::Io {
        file: dir.display().to_string(),
        error,
    })?;
    let mut out = ConfigFiles::default();
    let mut total = 0u64;
    for entry in entries {
        match entry {
            ConfigEntry::Unreadable(u) => out.unreadable.push(u),
            ConfigEntry::File {
                name,
                path,
                metadata,
            } => {
                // Check before reading: a directory over the limit allocates nothing more.
                if total + metadata.len() > limits.max_total_bytes {
                    return Err(ReadError::Invalid(error_at(
                        name,
                        format!(
                            "the config files up to this one hold {} bytes, over the limit of \
                             {} bytes for all config files (--config-max-bytes)",
                            total + metadata.len(),
                            limits.max_total_bytes
                        ),
                    )));
                }
                let text = read_limited(&path, &name, limits)?;
                total += text.len() as u64;
                out.files.push((name, text));
            }
        }
    }
    Ok(out)
}

/// The warnings that entries not loaded give.
pub(super) fn unreadable_warnings(unreadable: &[Unreadable]) -> Vec<LoadWarning> {
    unreadable
        .iter()
        .map(|u| LoadWarning {
            at: DocRef {
                file: u.name.clone(),
                ..DocRef::default()
            },
            field: None,
            message: format!("not loaded: {}", u.reason),
            subject: false,
        })
        .collect()
}

/// `(file name, content)` of the one file `path`.
pub(super) fn read_file(path: &Path, limits: &InputLimits) -> Result<ConfigFiles, LoadErrors> {
    let name = file_name(path);
    let text = read_limited(path, &name, limits).map_err(|e| match e {
        ReadError::Io { error, .. } => error_at(
            path.display().to_string(),
            format!("cannot read file: {error}"),
        ),
        ReadError::Invalid(errors) => errors,
    })?;
    Ok(ConfigFiles {
        files: vec![(name, text)],
        unreadable: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("routing-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\nspec:\n  hosts: [a.example]\n  addresses: [10.0.0.1]\n  ports: [{number: 80, name: http}]\n";

    #[test]
    fn entries_that_are_not_files_are_reported_and_the_rest_loads() {
        let d = dir("unreadable");
        std::fs::write(d.join("a.yaml"), SE).unwrap();
        std::fs::create_dir(d.join("dir.yaml")).unwrap();
        std::os::unix::fs::symlink(d.join("nowhere.yaml"), d.join("dangling.yaml")).unwrap();
        std::os::unix::fs::symlink(d.join("loop2.yaml"), d.join("loop1.yaml")).unwrap();
        std::os::unix::fs::symlink(d.join("loop1.yaml"), d.join("loop2.yaml")).unwrap();
        let files = read_config_dir(&d, &InputLimits::default()).unwrap();
        assert_eq!(files.files.len(), 1);
        let reasons: Vec<String> = files.unreadable.iter().map(|u| u.to_string()).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(
            reasons[0].starts_with("dangling.yaml: dangling symlink to "),
            "{reasons:?}"
        );
        assert_eq!(reasons[1], "dir.yaml: is a directory, not a file");
        assert!(
            reasons[2].starts_with("loop1.yaml: symlink to "),
            "{reasons:?}"
        );
        let report = crate::check_path(&d, "cluster.local");
        assert_eq!(report.result.unwrap().services().count(), 1);
        let warnings: Vec<String> = report.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            warnings.contains(&"dir.yaml: not loaded: is a directory, not a file".to_string()),
            "{warnings:?}"
        );
    }

    /// A ConfigMap volume: visible `<key>` symlinks into `..data`, itself a symlink to a
    /// timestamped dot directory. Each key loads once, the dot entries are not read.
    #[test]
    fn configmap_layout_loads_each_key_once_and_no_dot_entries() {
        let d = dir("configmap");
        let stamp = d.join("..2024_01_01_00_00_00.1");
        std::fs::create_dir(&stamp).unwrap();
        std::fs::write(stamp.join("a.yaml"), SE).unwrap();
        std::os::unix::fs::symlink("..2024_01_01_00_00_00.1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/a.yaml", d.join("a.yaml")).unwrap();
        std::fs::write(d.join(".hidden.yaml"), "not: [yaml").unwrap();
        let files = read_config_dir(&d, &InputLimits::default()).unwrap();
        let names: Vec<&str> = files.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["a.yaml"]);
        assert!(files.unreadable.is_empty());
        assert!(crate::load_dir(&d, "cluster.local").is_ok());
    }

    #[test]
    fn input_over_a_limit_is_an_error_naming_the_file() {
        let d = dir("limits");
        std::fs::write(d.join("a.yaml"), SE).unwrap();
        std::fs::write(d.join("b.yaml"), SE.replace("name: a", "name: b")).unwrap();
        let len = SE.len() as u64;
        let per_file = InputLimits {
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_file_bytes: len - 1,
        };
        let e = LoadErrors::from(read_config_dir(&d, &per_file).unwrap_err()).to_string();
        assert!(e.starts_with("a.yaml: file is "), "{e}");
        assert!(e.contains("--config-max-file-bytes"), "{e}");
        let total = InputLimits {
            max_total_bytes: 2 * len - 1,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        };
        let e = LoadErrors::from(read_config_dir(&d, &total).unwrap_err()).to_string();
        assert!(
            e.starts_with("b.yaml: the config files up to this one hold"),
            "{e}"
        );
        assert!(e.contains("--config-max-bytes"), "{e}");
        // One file: the per-file limit applies too.
        let mut options = crate::LoadOptions::new("cluster.local");
        options.limits = per_file;
        let report = crate::check_path_with(&d.join("a.yaml"), &options);
        assert!(report
            .result
            .unwrap_err()
            .to_string()
            .contains("over the limit"));
        let fits = InputLimits {
            max_total_bytes: 2 * len,
            max_file_bytes: len,
        };
        assert_eq!(read_config_dir(&d, &fits).unwrap().files.len(), 2);
    }
}
