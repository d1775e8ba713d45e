//! Probing the regions and steering traffic: one probe task per region feeds its health machine; one
//! steering task decides where writes and reads go whenever a health changes (or an operator asks).

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    coverage,
    health::{Observation, RegionHealth},
    replication,
    shared::Shared,
    status::{Switch, Traffic},
};
use crate::{log::now_ms, metrics::names, sync::lock};

/// How often the steering task looks again without being woken (fail-back delays run out on it).
const STEER_TICK: Duration = Duration::from_millis(200);

/// A probe still running after this long makes the router ask whether the region's brokers refuse
/// connections: an answering cluster has answered by then, and a killed one is then found DOWN
/// without waiting for the probe's timeout (or `down_after` of them).
const REFUSAL_CHECK_AFTER: Duration = Duration::from_millis(250);

/// How long the refusal check waits for each broker's connection: a refusal comes back at once,
/// and a connection that takes longer is not a refusal.
const REFUSAL_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// Starts the probe tasks and the steering task.
pub(super) fn start(shared: &Arc<Shared>) {
    for index in 0..shared.regions.len() {
        let shared_for_probe = shared.clone();
        shared
            .tasks
            .spawn(async move { probe_region(shared_for_probe, index).await });
    }
    for index in 0..shared.regions.len() {
        let shared_for_lag = shared.clone();
        shared
            .tasks
            .spawn(async move { measure_replication(shared_for_lag, index).await });
        let shared_for_checkpoints = shared.clone();
        shared
            .tasks
            .spawn(async move { measure_checkpoints(shared_for_checkpoints, index).await });
    }
    let shared_for_steer = shared.clone();
    shared
        .tasks
        .spawn(async move { steer(shared_for_steer).await });
}

/// Runs `step` every `probe_interval` until the router closes; a step that overruns delays the
/// next rather than bunching them.
async fn every_probe_interval<F, Step>(shared: &Shared, step: F)
where
    F: FnMut() -> Step,
    Step: Future<Output = ()>,
{
    every(shared, shared.config.probe_interval, step).await;
}

/// Runs `step` every `period` until the router closes; a step that overruns delays the next.
async fn every<F, Step>(shared: &Shared, period: Duration, mut step: F)
where
    F: FnMut() -> Step,
    Step: Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.closed.cancelled() => return,
            _ = interval.tick() => {}
        }
        step().await;
    }
}

/// Probes one region every `probe_interval` until the router closes.
async fn probe_region(shared: Arc<Shared>, index: usize) {
    let shared = &*shared;
    every_probe_interval(shared, move || async move {
        let (seen, cause) = probe_once(shared, index).await;
        observe(shared, index, seen, cause);
    })
    .await;
}

/// Measures region `index`'s copies of the others every `probe_interval`, beside its probes
/// (not in their loop, so a slow read never delays the detection of a failure).
async fn measure_replication(shared: Arc<Shared>, index: usize) {
    let shared = &*shared;
    every_probe_interval(shared, move || async move {
        // A region that is not answering has nothing to read; what it held keeps ageing.
        if shared.health(index).usable() {
            let _ = tokio::time::timeout(
                shared.config.probe_timeout,
                replication::measure(shared, index),
            )
            .await;
        }
        replication::export(shared, index);
    })
    .await;
}

/// Measures every `checkpoint_interval` what region `to`'s checkpoints cover of the consumer groups
/// of each other region, while both answer; what was measured last stays shown meanwhile.
async fn measure_checkpoints(shared: Arc<Shared>, to: usize) {
    let shared = &*shared;
    let period = shared.config.checkpoint_interval;
    if period.is_zero() {
        return; // switched off
    }
    // What has been read of each source's checkpoints, by source region.
    let read = tokio::sync::Mutex::new(
        (0..shared.regions.len())
            .map(|_| coverage::CheckpointsRead::default())
            .collect::<Vec<_>>(),
    );
    let read = &read;
    every(shared, period, move || async move {
        let mut read = read.lock().await;
        let target = &shared.regions[to];
        if !shared.health(to).usable() {
            return;
        }
        let Ok(Ok(topics)) = tokio::time::timeout(period, target.topic_names(period)).await else {
            return;
        };
        for (from, source) in shared.regions.iter().enumerate() {
            if from == to || !shared.health(from).usable() {
                continue;
            }
            let measured = tokio::time::timeout(
                period,
                coverage::measure(
                    &*source.log(),
                    &source.name,
                    &*target.log(),
                    &topics,
                    &shared.policy,
                    &mut read[from],
                    now_ms(),
                ),
            )
            .await;
            match measured {
                Ok(Ok(Some(coverage))) => lock(&target.copies).covered(&source.name, coverage),
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(from = %source.name, to = %target.name, %error, "measuring checkpoints failed; the last measurement stays");
                }
                Err(_) => {
                    tracing::warn!(from = %source.name, to = %target.name, "measuring checkpoints took longer than log.checkpoint_interval; it goes on from there next time");
                }
            }
        }
    })
    .await;
}

/// One probe of region `index`, cut short when its brokers refuse connections.
async fn probe_once(shared: &Shared, index: usize) -> (Observation, String) {
    let log = shared.regions[index].log();
    let probe = log.probe(&shared.config.canary_topic, shared.config.probe_timeout);
    tokio::pin!(probe);
    let refused = || {
        (
            Observation::Refused,
            "every broker refuses connections".into(),
        )
    };
    let outcome = tokio::select! {
        outcome = &mut probe => outcome,
        () = tokio::time::sleep(REFUSAL_CHECK_AFTER.min(shared.config.probe_timeout)) => {
            if log.refuses_connections(REFUSAL_CHECK_TIMEOUT).await {
                return refused();
            }
            probe.await
        }
    };
    match outcome {
        Ok(took) => (
            Observation::Answered,
            format!("probes answer ({} ms)", took.as_millis()),
        ),
        // A probe that failed quickly (the client knew its brokers were gone) is asked too.
        Err(_) if log.refuses_connections(REFUSAL_CHECK_TIMEOUT).await => refused(),
        Err(error) => (Observation::Failed, error.to_string()),
    }
}

/// Feeds one observation of region `index` to its health machine, and acts on a change.
pub(super) fn observe(shared: &Shared, index: usize, seen: Observation, cause: String) {
    let region = &shared.regions[index];
    let (before, changed) = {
        let mut health = lock(&region.health);
        let before = health.state();
        (before, health.observe(seen, Instant::now()))
    };
    let Some(after) = changed else {
        // A failure's reason is worth showing while the state stands, and so is a healthy region's
        // latest answer; but a DOWN or RECOVERING region's cause keeps saying what happened.
        if seen != Observation::Answered || before.usable() {
            *lock(&region.cause) = cause;
        }
        return;
    };
    *lock(&region.cause) = cause.clone();
    metrics::gauge!(names::REGION_UP, "region" => region.name.clone())
        .set(f64::from(u8::from(after.usable())));
    metrics::counter!(names::REGION_SWITCHES, "region" => region.name.clone()).increment(1);
    match after {
        RegionHealth::Down => region.rebuild(&shared.tasks),
        // A cluster that was lost may come back with other topics (or none): read metadata afresh.
        RegionHealth::Recovering => region.log().forget_cached_metadata(),
        RegionHealth::Healthy | RegionHealth::Suspect => {}
    }
    if after.usable() {
        tracing::info!(region = %region.name, from = %before, to = %after, %cause, "region health changed");
    } else {
        tracing::warn!(region = %region.name, from = %before, to = %after, %cause, "region health changed");
    }
    shared.steer.notify_one();
}

/// Counts a failed client request against the region (at most once per probe interval, so a burst of
/// failures from one incident is one observation).
pub(super) fn report_failure(shared: &Shared, index: usize, cause: String) {
    let region = &shared.regions[index];
    {
        let mut last = lock(&region.last_reported_failure);
        if last.is_some_and(|at| at.elapsed() < shared.config.probe_interval) {
            return;
        }
        *last = Some(Instant::now());
    }
    observe(shared, index, Observation::Failed, cause);
}

/// Which region traffic should go to: the pinned one, else the first usable one in preference order,
/// else (nothing usable) where it goes now.
pub(super) fn choose(health: &[RegionHealth], manual: Option<usize>, current: usize) -> usize {
    manual
        .or_else(|| health.iter().position(|state| state.usable()))
        .unwrap_or(current)
}

/// Moves writes, then reads, to the chosen region whenever health or the operator says so.
async fn steer(shared: Arc<Shared>) {
    // On fail-back, reads follow writes after `fail_back_consumer_delay`: (target, when).
    let mut pending_reads: Option<(usize, Instant)> = None;
    loop {
        tokio::select! {
            () = shared.closed.cancelled() => return,
            () = shared.steer.notified() => {}
            () = tokio::time::sleep(STEER_TICK) => {}
        }
        let health: Vec<RegionHealth> = (0..shared.regions.len())
            .map(|index| shared.health(index))
            .collect();
        let manual = *lock(&shared.manual);
        let writes = *shared.writes.borrow();
        let target = choose(&health, manual, writes);
        if target != writes {
            switch(
                &shared,
                Traffic::Writes,
                writes,
                target,
                cause(&shared, &health, manual, writes),
            );
        }
        let reads = *shared.reads.borrow();
        if reads == target {
            pending_reads = None;
            continue;
        }
        // Leaving a region that is lost (or an operator's order) cannot wait; failing back can, so
        // MirrorMaker 2 copies what was written meanwhile and checkpoints the groups first.
        let urgent = manual.is_some() || !health[reads].usable();
        let due = match pending_reads {
            Some((pending, due)) if pending == target => due,
            _ => {
                let due = Instant::now() + shared.config.fail_back_consumer_delay;
                pending_reads = Some((target, due));
                due
            }
        };
        if urgent || Instant::now() >= due {
            switch(
                &shared,
                Traffic::Reads,
                reads,
                target,
                cause(&shared, &health, manual, reads),
            );
            pending_reads = None;
        }
    }
}

/// Why traffic leaves region `from`.
fn cause(shared: &Shared, health: &[RegionHealth], manual: Option<usize>, from: usize) -> String {
    let from_region = &shared.regions[from];
    if let Some(index) = manual {
        return format!(
            "an operator pinned traffic to {}",
            shared.regions[index].name
        );
    }
    if health[from].usable() {
        let preferred = &shared.regions[0];
        format!(
            "{} is HEALTHY again for the hold-down of {:?}",
            preferred.name, shared.config.hold_down
        )
    } else {
        format!(
            "{} is {}: {}",
            from_region.name,
            health[from],
            lock(&from_region.cause)
        )
    }
}

fn switch(shared: &Shared, traffic: Traffic, from: usize, to: usize, cause: String) {
    let record = Switch {
        at_ms: now_ms(),
        traffic,
        from: shared.regions[from].name.clone(),
        to: shared.regions[to].name.clone(),
        cause,
    };
    tracing::warn!(traffic = traffic.as_str(), from = %record.from, to = %record.to, cause = %record.cause, "region switch");
    metrics::counter!(names::REGION_TRAFFIC_SWITCHES, "traffic" => traffic.as_str(), "to" => record.to.clone())
        .increment(1);
    shared.switches.fetch_add(1, Ordering::Relaxed);
    *lock(&shared.last_switch) = Some(record);
    match traffic {
        Traffic::Writes => shared.writes.send_replace(to),
        Traffic::Reads => shared.reads.send_replace(to),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegionHealth::*;

    #[test]
    fn traffic_goes_to_the_first_usable_region() {
        assert_eq!(choose(&[Healthy, Healthy], None, 1), 0);
        assert_eq!(choose(&[Suspect, Healthy], None, 0), 0);
        assert_eq!(choose(&[Down, Healthy], None, 0), 1);
        assert_eq!(choose(&[Recovering, Suspect], None, 1), 1);
        assert_eq!(choose(&[Down, Down], None, 1), 1);
        assert_eq!(choose(&[Healthy, Down], Some(1), 0), 1);
    }
}
