//! Watching files for changes, cheaply and without false alarms: change notifications (inotify
//! through the `notify` crate) wake the watcher at once, and a fallback look at a fixed interval
//! catches what notifications miss (a watched directory replaced, a file behind a symlink into
//! another directory). A look reads metadata (size, times, inode) and reads and hashes a file
//! again only when that changed. A read that fails for a temporary reason (EMFILE, ENFILE,
//! ENOMEM) observes nothing: it neither triggers a reload nor counts as a change.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tracing::{debug, warn};

/// Whether a failed read says nothing about the file: the process or the system ran out of
/// descriptors or memory, or the call was interrupted. Such a look is skipped.
pub(crate) fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS | libc::EAGAIN | libc::EINTR
        )
    ) || matches!(
        e.kind(),
        std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::OutOfMemory
    )
}

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Content hashes of files, recomputed only when a file's [`Stamp`] changed.
#[derive(Debug, Default)]
pub(crate) struct Hashes {
    known: HashMap<PathBuf, (Stamp, u64)>,
    /// Files read and hashed so far (what a look cost).
    pub reads: u64,
}

impl Hashes {
    /// The content hash of `path` (symlinks followed); `metadata` when the caller has it.
    pub(crate) fn hash(
        &mut self,
        path: &Path,
        metadata: Option<&std::fs::Metadata>,
    ) -> std::io::Result<u64> {
        let stamp = match metadata {
            Some(m) => Stamp::of(m),
            None => Stamp::of(&std::fs::metadata(path)?),
        };
        if let Some((known, hash)) = self.known.get(path) {
            if *known == stamp {
                return Ok(*hash);
            }
        }
        let mut file = std::fs::File::open(path)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            buf[..n].hash(&mut h);
        }
        let hash = h.finish();
        self.reads += 1;
        self.known.insert(path.to_path_buf(), (stamp, hash));
        Ok(hash)
    }

    /// Forget files not in `keep` (removed from the directory).
    pub(crate) fn retain(&mut self, keep: impl Fn(&Path) -> bool) {
        self.known.retain(|p, _| keep(p));
    }
}

/// What to do after a look ([`Settled::look`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing new, or still changing.
    None,
    /// A new stable state: load it, then report [`Settled::served`] or [`Settled::retry`].
    New,
    /// Back to the state that is serving (after a rejected one): nothing to load.
    BackToServing,
}

/// A fingerprint of some files, acted on once it has stayed the same for one more look
/// (writers update files one at a time), and never acted on twice: the state that serves is
/// remembered, so files that come back to it (or a look that failed and recovered) load nothing.
pub(crate) struct Settled<F> {
    previous: Option<F>,
    tried: Option<F>,
    serving: Option<F>,
}

impl<F: PartialEq + Clone> Settled<F> {
    /// `serving`: the fingerprint of what is loaded now (`None` when it could not be taken).
    pub(crate) fn new(serving: Option<F>) -> Self {
        Self {
            previous: serving.clone(),
            tried: serving.clone(),
            serving,
        }
    }

    /// Feed one look.
    pub(crate) fn look(&mut self, now: F) -> Change {
        let stable = self.previous.as_ref() == Some(&now);
        self.previous = Some(now.clone());
        if !stable || self.tried.as_ref() == Some(&now) {
            return Change::None;
        }
        self.tried = Some(now.clone());
        if self.serving.as_ref() == Some(&now) {
            Change::BackToServing
        } else {
            Change::New
        }
    }

    /// Whether the last look differed from the one before (a change is settling).
    pub(crate) fn settling(&self) -> bool {
        self.previous != self.tried
    }

    /// The state last tried is now serving.
    pub(crate) fn served(&mut self) {
        self.serving = self.tried.clone();
    }

    /// The state last tried could not be loaded for a temporary reason: try it again.
    pub(crate) fn retry(&mut self) {
        self.tried = None;
    }
}

/// Change notifications for some directories, plus the fallback interval.
pub(crate) struct Changes {
    _watcher: Option<notify::RecommendedWatcher>,
    woken: Arc<tokio::sync::Notify>,
    interval: Duration,
}

/// After a notification or a look that saw a change, look again this soon.
const SETTLE: Duration = Duration::from_millis(50);

impl Changes {
    /// Watch `dirs` (not recursively; each once). Without notifications (the system refused a
    /// watch) the fallback look every `interval` still sees every change.
    pub(crate) fn watch(what: &str, dirs: &[PathBuf], interval: Duration) -> Self {
        let woken = Arc::new(tokio::sync::Notify::new());
        let wake = woken.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Errors (a lost queue) wake too: the next look finds out what changed.
            if let Ok(e) = &event {
                debug!(?e.kind, paths = ?e.paths, "file change notification");
            }
            wake.notify_one();
        });
        let watcher = match watcher {
            Ok(mut w) => {
                let mut seen = Vec::new();
                for dir in dirs {
                    if seen.contains(dir) {
                        continue;
                    }
                    seen.push(dir.clone());
                    if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                        warn!(
                            dir = %dir.display(),
                            error = %e,
                            "no change notifications for the {what}; looking every {interval:?}"
                        );
                    }
                }
                Some(w)
            }
            Err(e) => {
                warn!(error = %e, "no change notifications for the {what}; looking every {interval:?}");
                None
            }
        };
        Self {
            _watcher: watcher,
            woken,
            interval,
        }
    }

    /// Wait for a notification or the fallback interval (`SETTLE` while a change settles).
    pub(crate) async fn next(&self, settling: bool) {
        let wait = if settling {
            SETTLE.min(self.interval)
        } else {
            self.interval
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.woken.notified() => {
                // Let a burst of events (a rename, several files) land before looking.
                tokio::time::sleep(SETTLE.min(self.interval)).await;
            }
        }
    }
}

/// Directories holding `files` (what to watch for them).
pub(crate) fn parents(files: &[&Path]) -> Vec<PathBuf> {
    files
        .iter()
        .filter_map(|f| f.parent())
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_acted_on_once_when_stable_and_never_to_return_to_what_serves() {
        let mut s = Settled::new(Some(1));
        assert_eq!(s.look(1), Change::None);
        assert_eq!(s.look(2), Change::None, "not stable yet");
        assert!(s.settling());
        assert_eq!(s.look(2), Change::New);
        assert_eq!(s.look(2), Change::None, "acted on once");
        // 2 was rejected; the files come back to 1, which serves.
        assert_eq!(s.look(1), Change::None);
        assert_eq!(s.look(1), Change::BackToServing);
        assert_eq!(s.look(3), Change::None);
        assert_eq!(s.look(3), Change::New);
        s.retry();
        assert_eq!(s.look(3), Change::New, "retried after a temporary failure");
        s.served();
        assert_eq!(s.look(3), Change::None);
    }

    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = std::env::temp_dir().join(format!("waypoint-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.yaml");
        std::fs::write(&f, "a: 1\n").unwrap();
        let mut h = Hashes::default();
        let first = h.hash(&f, None).unwrap();
        for _ in 0..10 {
            assert_eq!(h.hash(&f, None).unwrap(), first);
        }
        assert_eq!(h.reads, 1, "read once while unchanged");
        std::fs::write(&f, "a: 2\n").unwrap();
        assert_ne!(h.hash(&f, None).unwrap(), first);
        assert_eq!(h.reads, 2);
    }

    #[test]
    fn descriptor_exhaustion_is_temporary_and_a_missing_file_is_not() {
        assert!(is_transient(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_transient(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_transient(&std::io::Error::from_raw_os_error(
            libc::ENOENT
        )));
        assert!(!is_transient(&std::io::Error::from_raw_os_error(
            libc::EACCES
        )));
        assert!(!is_transient(&std::io::Error::from_raw_os_error(
            libc::ELOOP
        )));
    }
}
