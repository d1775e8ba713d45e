//! How far behind each other region the copies in a region are: the data a switch would lose now.
//!
//! Every probe writes a canary record into its region's canary topic, its value the time it was
//! written (ms since the epoch) and its `courier-origin` the region. MirrorMaker 2 mirrors that
//! topic like any other (`a.courier.canary` in `b`, under the default policy), so in region `b` the
//! newest canary copied from `a` says how old the newest of `a`'s records that `b` holds can be: if
//! `a` died now, what `a` acknowledged since is what `b` lacks. Every probe interval, while a
//! region answers, the router reads there the newest canary copied from every other region; the
//! age of the newest seen is `courier_region_replication_lag_seconds{from, to}` (growing while no
//! newer copy is seen), and a pair whose lag is above `regions.replication_stale_after` (or that
//! has no copy at all) is stale in the status.

use std::sync::Arc;

use super::{
    regional::{RegionalLog, read_range},
    shared::Shared,
};
use crate::{
    Result,
    log::{Position, TopicPartition, now_ms},
    metrics::names,
    sync::lock,
};

/// Records read back from a mirrored canary's end to find the newest from its source: under the
/// identity policy the mirror is the region's own canary topic, where every gateway replica's
/// probes of that region write too.
const TAIL: i64 = 256;

/// Reads, in region `to`, the newest canary copied from each other region, and records its age.
pub(super) async fn measure(shared: &Shared, to: usize) {
    let region = &shared.regions[to];
    let log = region.log();
    let Ok(existing) = region.topic_names(shared.config.probe_interval).await else {
        return;
    };
    for (from, source) in shared.regions.iter().enumerate() {
        if from == to {
            continue;
        }
        let mirror = shared
            .policy
            .remote_topic(&source.name, &shared.config.canary_topic);
        // Never read a mirror that is not there: reading may create a topic.
        if !existing.contains(&mirror) {
            continue;
        }
        let newest = match newest_copy(&log, &mirror, &source.name).await {
            Ok(Some(written_ms)) => written_ms,
            Ok(None) => continue,
            Err(error) => {
                tracing::debug!(from = %source.name, to = %region.name, %error, "reading the mirrored canary");
                continue;
            }
        };
        lock(&region.copies).seen(&source.name, newest);
    }
}

/// Sets `courier_region_replication_lag_seconds` for region `to`'s copies: the age of the newest
/// copy seen, which keeps growing while no newer one is seen (a stopped replicator, a region that
/// cannot be read), so an alert on it fires.
pub(super) fn export(shared: &Shared, to: usize) {
    let region = &shared.regions[to];
    let now = now_ms();
    for (from, newest) in lock(&region.copies).newest() {
        metrics::gauge!(
            names::REGION_REPLICATION_LAG,
            "from" => from.clone(),
            "to" => region.name.clone()
        )
        .set((now - newest).max(0) as f64 / 1e3);
    }
}

/// The write time of the newest canary from `source` in `mirror`'s last records.
async fn newest_copy(
    log: &Arc<dyn RegionalLog>,
    mirror: &str,
    source: &str,
) -> Result<Option<i64>> {
    let partition = TopicPartition::new(mirror, 0);
    let end = log.resolve(&partition, Position::Latest).await?;
    let start = log.resolve(&partition, Position::Earliest).await?;
    let records = read_range(&**log, &partition, (end - TAIL).max(start), end).await?;
    Ok(records
        .iter()
        .filter(|record| record.origin == source)
        .filter_map(|record| {
            std::str::from_utf8(record.value.as_deref()?)
                .ok()?
                .parse()
                .ok()
        })
        .max())
}
