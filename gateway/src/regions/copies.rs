//! What a region holds of the others' writes and of their groups' positions, as the replication
//! lag ([`replication`](super::replication)) and checkpoint ([`coverage`](super::coverage))
//! measurements found it, and as operators see it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::coverage::{CheckpointStatus, Coverage};

/// How far one region's copies of another's are behind, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationStatus {
    /// The region copied from.
    pub from: String,
    /// The age of the newest canary copied from it, in ms: the writes of `from` this region lacks
    /// if `from` were lost now. `None` until one has been seen (no mirror of the canary yet).
    pub lag_ms: Option<i64>,
    /// Over `regions.replication_stale_after`, or nothing copied.
    pub stale: bool,
    /// What this region's checkpoints cover of `from`'s consumer groups: the duplicates window.
    /// `None` until measured.
    pub checkpoints: Option<CheckpointStatus>,
}

/// The newest canary write time (ms since the epoch) seen copied from each other region, by its
/// name; a region nothing has been seen copied from is missing.
#[derive(Debug, Default)]
pub(super) struct Copies {
    newest_ms: BTreeMap<String, i64>,
    /// The last checkpoint measurement, by source region.
    coverage: BTreeMap<String, Coverage>,
}

impl Copies {
    /// A copy of `source`'s canary written at `written_ms` was seen; the newest counts.
    pub(super) fn seen(&mut self, source: &str, written_ms: i64) {
        let newest = self
            .newest_ms
            .entry(source.to_owned())
            .or_insert(written_ms);
        *newest = (*newest).max(written_ms);
    }

    /// What the checkpoints of `source` cover now.
    pub(super) fn covered(&mut self, source: &str, coverage: Coverage) {
        self.coverage.insert(source.to_owned(), coverage);
    }

    /// The last checkpoint measurement, by source region.
    pub(super) fn coverage(&self) -> impl Iterator<Item = (&String, &Coverage)> {
        self.coverage.iter()
    }

    /// The newest write time seen copied, by source region.
    pub(super) fn newest(&self) -> impl Iterator<Item = (&String, &i64)> {
        self.newest_ms.iter()
    }

    /// The copies of each of `sources` at `now_ms`: stale when older than `stale_after_ms` or
    /// when none was seen.
    pub(super) fn status<'a>(
        &self,
        sources: impl Iterator<Item = &'a str>,
        now_ms: i64,
        stale_after_ms: i64,
    ) -> Vec<ReplicationStatus> {
        sources
            .map(|source| {
                let lag_ms = self
                    .newest_ms
                    .get(source)
                    .map(|newest| (now_ms - newest).max(0));
                ReplicationStatus {
                    from: source.to_owned(),
                    lag_ms,
                    stale: lag_ms.is_none_or(|lag| lag > stale_after_ms),
                    checkpoints: self.coverage.get(source).map(Coverage::status),
                }
            })
            .collect()
    }
}
