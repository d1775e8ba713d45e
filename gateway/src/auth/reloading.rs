//! A file read at start and re-read when its bytes change (the users file, the policy): the last
//! version that parsed stays in use when a new one does not, and is swapped whole when one does,
//! so a request sees one version or the other, never half of each.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::metrics::names;

/// The current version of a file's contents, kept up to date by a task. Cheap to clone.
pub(super) struct Reloading<T> {
    current: Arc<ArcSwap<T>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading").finish_non_exhaustive()
    }
}

/// Turns a file's text into its value, or says what is wrong with it.
pub(super) type Parse<T, E> = fn(&str, &str) -> Result<T, E>;

/// An error that can say a file could not be read.
pub(super) trait FileError: fmt::Display + 'static {
    /// `path` could not be read.
    fn unreadable(path: &Path, error: std::io::Error) -> Self;
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Reads `path` with `parse` (given the path, for errors, and the text); then checks it every
    /// `interval` until `stop`. `kind` names the file in logs and metrics (`users`, `policy`).
    pub(super) fn start<E: FileError>(
        kind: &'static str,
        path: PathBuf,
        parse: Parse<T, E>,
        interval: Duration,
        stop: CancellationToken,
    ) -> Result<Self, E> {
        let text = std::fs::read_to_string(&path).map_err(|error| E::unreadable(&path, error))?;
        let value = parse(&path.display().to_string(), &text)?;
        let current = Arc::new(ArcSwap::from_pointee(value));
        let watcher = Watcher {
            kind,
            path,
            parse,
            current: current.clone(),
            seen: digest(&text),
            unreadable: 0,
        };
        tokio::spawn(watcher.run(interval, stop));
        Ok(Self { current })
    }

    /// Tells this file from the others read (its clones share it).
    pub(super) fn id(&self) -> usize {
        Arc::as_ptr(&self.current) as usize
    }

    /// A value that never changes (tests, and callers with nothing to read).
    pub(super) fn fixed(value: T) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(value)),
        }
    }

    /// The version in use now.
    pub(super) fn current(&self) -> Arc<T> {
        self.current.load_full()
    }
}

struct Watcher<T, E> {
    kind: &'static str,
    path: PathBuf,
    parse: Parse<T, E>,
    current: Arc<ArcSwap<T>>,
    /// The text as last seen, parsed or not: a bad file is reported once, not every interval.
    seen: Vec<u8>,
    /// Checks in a row that found the file unreadable.
    unreadable: u32,
}

/// Checks in a row a file may be unreadable (being replaced) before it is reported: then its
/// removal is a mistake to be told about, since the last version stays in use.
const UNREADABLE_BEFORE_WARNING: u32 = 5;

impl<T: Send + Sync + 'static, E: fmt::Display> Watcher<T, E> {
    async fn run(mut self, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => self.check().await,
            }
        }
    }

    async fn check(&mut self) {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(error) => {
                // Missing for a moment while it is replaced (a Kubernetes secret swaps a link):
                // the last version stays and the next tick tries again. Missing for longer (the
                // file was deleted, say, to revoke every user) is reported once and counted: the
                // last version still decides, so deleting the file revokes nobody.
                self.unreadable = self.unreadable.saturating_add(1);
                if self.unreadable == UNREADABLE_BEFORE_WARNING {
                    metrics::counter!(names::AUTH_RELOADS, "file" => self.kind, "outcome" => "unreadable")
                        .increment(1);
                    tracing::warn!(file = self.kind, path = %self.path.display(), %error, "cannot be read; its last version stays in use until it can");
                } else {
                    tracing::debug!(file = self.kind, path = %self.path.display(), %error, "not readable now");
                }
                return;
            }
        };
        self.unreadable = 0;
        let seen = digest(&text);
        if seen == self.seen {
            return;
        }
        self.seen = seen;
        match (self.parse)(&self.path.display().to_string(), &text) {
            Ok(value) => {
                self.current.store(Arc::new(value));
                metrics::counter!(names::AUTH_RELOADS, "file" => self.kind, "outcome" => "loaded")
                    .increment(1);
                tracing::info!(file = self.kind, path = %self.path.display(), "reloaded");
            }
            Err(error) => {
                metrics::counter!(names::AUTH_RELOADS, "file" => self.kind, "outcome" => "failed")
                    .increment(1);
                tracing::error!(file = self.kind, %error, "the new version does not load; the previous one stays in use");
            }
        }
    }
}

fn digest(text: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Unparsable(String);

    impl fmt::Display for Unparsable {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl FileError for Unparsable {
        fn unreadable(path: &Path, error: std::io::Error) -> Self {
            Self(format!("{}: {error}", path.display()))
        }
    }

    fn parse(_path: &str, text: &str) -> Result<u32, Unparsable> {
        text.trim()
            .parse()
            .map_err(|error| Unparsable(format!("{error}")))
    }

    #[tokio::test]
    async fn a_change_is_taken_and_a_bad_version_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n");
        std::fs::write(&path, "1").unwrap();
        let stop = CancellationToken::new();
        let interval = Duration::from_millis(20);
        let value = Reloading::start("test", path.clone(), parse, interval, stop.clone()).unwrap();
        assert_eq!(*value.current(), 1);

        let until = |wanted: u32| {
            let value = value.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), async {
                    while *value.current() != wanted {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
                .unwrap();
            }
        };
        std::fs::write(&path, "2").unwrap();
        until(2).await;
        std::fs::write(&path, "not a number").unwrap();
        tokio::time::sleep(interval * 5).await;
        assert_eq!(
            *value.current(),
            2,
            "a bad file keeps the last good version"
        );
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(interval * 5).await;
        assert_eq!(
            *value.current(),
            2,
            "a missing file keeps the last good version"
        );
        std::fs::write(&path, "3").unwrap();
        until(3).await;
        stop.cancel();

        assert!(Reloading::start("test", dir.path().join("none"), parse, interval, stop).is_err());
    }
}
