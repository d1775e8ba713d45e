//! Where the JWKS comes from, and the task that re-reads it.
//!
//! The task sleeps until the [`Schedule`] says to read: every `refresh` after a good read, sooner
//! (1 s, 2 s, 4 s, … up to `refresh`) after a failed one, and early when a token names an unknown
//! key id, at most once per cooldown (30 s) so that forged key ids cannot make us hammer the
//! identity provider. A failed read, or a document with no usable keys, keeps the last good set.

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::{
    claims::Rules,
    config::JwtConfig,
    errors::{JwksError, JwtError},
    fetch::{Fetcher, MAX_JWKS_BYTES},
    keys::KeySet,
};

/// The refresh task's fixed intervals (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    /// The least time between two early reads.
    pub(super) early_cooldown: Duration,
    /// The wait after the first failed read; it doubles with each further failure.
    pub(super) first_retry: Duration,
    /// How long one fetch of a URL may take.
    pub(super) fetch_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            early_cooldown: Duration::from_secs(30),
            first_retry: Duration::from_secs(1),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the JWKS is read from.
#[derive(Debug)]
pub(super) enum Origin {
    File(PathBuf),
    Url(Fetcher),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Url(fetcher) => write!(f, "url {}", fetcher.url()),
        }
    }
}

impl Origin {
    /// The origin `config` names (it has been validated).
    pub(super) fn from_config(
        config: &JwtConfig,
        fetch_timeout: Duration,
    ) -> Result<Self, JwtError> {
        match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => Ok(Self::File(path.clone())),
            (None, Some(url)) => Ok(Self::Url(Fetcher::new(url, fetch_timeout)?)),
            (None, None) => Err(JwtError::Config(
                "auth.jwt.jwks_file or auth.jwt.jwks_url must be set".into(),
            )),
        }
    }

    /// Reads and parses the JWKS: the keys, and the document they came from (to tell a changed
    /// set from the same one read again).
    pub(super) async fn load(&self) -> Result<(KeySet, Vec<u8>), JwksError> {
        let document = match self {
            Self::File(path) => {
                let document = tokio::fs::read(path).await.map_err(JwksError::Read)?;
                if document.len() > MAX_JWKS_BYTES {
                    return Err(JwksError::TooLarge {
                        limit: MAX_JWKS_BYTES,
                    });
                }
                document
            }
            Self::Url(fetcher) => fetcher.get().await?,
        };
        let secrets = matches!(self, Self::File(_));
        Ok((KeySet::parse(&document, secrets)?, document))
    }
}

/// When the next read is due.
#[derive(Debug)]
pub(super) struct Schedule {
    refresh: Duration,
    timing: Timing,
    next: Instant,
    /// Failed reads since the last good one.
    failures: u32,
    /// When the last early read was scheduled for.
    last_early: Option<Instant>,
}

impl Schedule {
    pub(super) fn new(refresh: Duration, timing: Timing) -> Self {
        Self {
            refresh,
            timing,
            next: Instant::now() + refresh,
            failures: 0,
            last_early: None,
        }
    }

    pub(super) fn next(&self) -> Instant {
        self.next
    }

    /// A read succeeded at `now`.
    pub(super) fn loaded(&mut self, now: Instant) {
        self.failures = 0;
        self.next = now + self.refresh;
    }

    /// A read failed at `now`: retry after a backoff that doubles, up to `refresh`.
    pub(super) fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let doublings = (self.failures - 1).min(20);
        let backoff = self.timing.first_retry.saturating_mul(1 << doublings);
        self.next = now + backoff.min(self.refresh);
    }

    /// A token named an unknown key at `now`: read as soon as the cooldown since the last early
    /// read allows, unless a read is due sooner anyway.
    pub(super) fn early(&mut self, now: Instant) {
        let earliest = self
            .last_early
            .map_or(now, |last| (last + self.timing.early_cooldown).max(now));
        if earliest < self.next {
            self.next = earliest;
            self.last_early = Some(earliest);
        }
    }
}

/// The task that keeps [`Shared::keys`] current.
pub(super) struct Refresher {
    origin: Origin,
    shared: Arc<Shared>,
    schedule: Schedule,
    /// The document of the set in use, so that re-reading the same one logs nothing.
    document: Option<Vec<u8>>,
}

impl Refresher {
    pub(super) fn new(
        origin: Origin,
        shared: Arc<Shared>,
        schedule: Schedule,
        document: Option<Vec<u8>>,
    ) -> Self {
        Self {
            origin,
            shared,
            schedule,
            document,
        }
    }

    /// Reads the JWKS when due, until `stop`.
    pub(super) async fn run(mut self, stop: CancellationToken) {
        let shared = self.shared.clone();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = shared.refresh_early.notified() => self.schedule.early(Instant::now()),
                () = tokio::time::sleep_until(self.schedule.next()) => {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = self.reload() => {}
                    }
                }
            }
        }
    }

    async fn reload(&mut self) {
        let result = self.origin.load().await;
        let now = Instant::now();
        match result {
            Ok((keys, document)) => {
                self.schedule.loaded(now);
                if self.document.as_ref() != Some(&document) {
                    tracing::info!(source = %self.origin, keys = keys.len(), skipped = ?keys.skipped(), "JWKS changed");
                    metrics::counter!(crate::metrics::names::AUTH_RELOADS, "file" => "jwks", "outcome" => "loaded")
                        .increment(1);
                    self.shared.keys.store(Arc::new(keys));
                    self.document = Some(document);
                }
            }
            Err(error) => {
                self.schedule.failed(now);
                // The last good set stays: a key the provider revoked meanwhile verifies until a
                // fetch succeeds. Counted, so a refresh failing for long is seen.
                metrics::counter!(crate::metrics::names::AUTH_RELOADS, "file" => "jwks", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(source = %self.origin, %error, retry_in = ?self.schedule.next() - now, "JWKS refresh failed; keeping the keys already loaded");
            }
        }
    }
}

/// What the verifier and its refresh task share.
pub(super) struct Shared {
    /// The last good key set, swapped whole on a successful refresh.
    pub(super) keys: ArcSwap<KeySet>,
    pub(super) rules: Rules,
    /// Asks the refresh task for an early read (it rate-limits these).
    pub(super) refresh_early: Notify,
}
