//! Timing a workload: records per second, and ack latency in a histogram.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::args::BenchArgs;

/// One measured side.
pub(super) struct Measurement {
    pub(super) records: usize,
    pub(super) elapsed: Duration,
    pub(super) latency: Option<Histogram<u64>>,
    /// For a subscription: how long until its first records came (joining the group, assignment,
    /// the first fetch), which a short run's rate includes.
    pub(super) first_record: Option<FirstRecords>,
}

/// When a subscription's first records came, and how many came at once (a batch).
#[derive(Debug, Clone, Copy)]
pub(super) struct FirstRecords {
    pub(super) after: Duration,
    pub(super) count: usize,
}

impl Measurement {
    pub(super) fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    /// Records per second from the first records on (those left out: they took no time), for a
    /// subscription whose start was timed.
    pub(super) fn rate_from_first(&self) -> Option<f64> {
        let first = self.first_record?;
        let reading = self.elapsed.checked_sub(first.after)?.as_secs_f64();
        (reading > 0.0).then(|| self.records.saturating_sub(first.count) as f64 / reading)
    }

    pub(super) fn percentile_ms(&self, quantile: f64) -> String {
        self.latency.as_ref().map_or_else(
            || "-".to_owned(),
            |h| format!("{:.2}", h.value_at_quantile(quantile) as f64 / 1000.0),
        )
    }
}

/// The round with the median rate (the upper one of an even count).
pub(super) fn median(rounds: &[Measurement]) -> Result<&Measurement> {
    let mut sorted: Vec<&Measurement> = rounds.iter().collect();
    sorted.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    sorted
        .get(sorted.len() / 2)
        .copied()
        .context("no rounds were measured")
}

pub(super) fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("creating a histogram")
}

/// Splits `records` into per-stream batch counts.
pub(super) fn batches_per_stream(args: &BenchArgs) -> Vec<Vec<usize>> {
    let mut plan = vec![Vec::new(); args.streams];
    let mut left = args.records;
    let mut stream = 0;
    while left > 0 {
        let size = left.min(args.batch);
        plan[stream % args.streams].push(size);
        left -= size;
        stream += 1;
    }
    plan
}

/// Runs one producer per stream (each given its share of [`batches_per_stream`]) at once; the
/// measurement spans them all and merges their ack latencies.
pub(super) async fn measure_producers<Fut>(
    args: &BenchArgs,
    mut producer: impl FnMut(Vec<usize>) -> Fut,
) -> Result<Measurement>
where
    Fut: Future<Output = Result<Histogram<u64>>> + Send + 'static,
{
    let started = Instant::now();
    let mut streams = JoinSet::new();
    for batches in batches_per_stream(args) {
        streams.spawn(producer(batches));
    }
    let mut latency = histogram()?;
    while let Some(done) = streams.join_next().await {
        latency.add(done.context("a benchmark stream panicked")??)?;
    }
    Ok(Measurement {
        records: args.records,
        elapsed: started.elapsed(),
        latency: Some(latency),
        first_record: None,
    })
}

/// One producer stream that keeps `pipeline` batches in flight: `send(size)` queues a batch and
/// returns what completes when it is acknowledged. Latency runs from `send` to that completion.
pub(super) async fn pipelined<Sent, Done>(
    batches: Vec<usize>,
    pipeline: usize,
    mut send: impl FnMut(usize) -> Sent,
) -> Result<Histogram<u64>>
where
    Sent: Future<Output = Result<Done>>,
    Done: Future<Output = Result<()>> + Send + 'static,
{
    let mut latency = histogram()?;
    let mut pending = JoinSet::new();
    for size in batches {
        if pending.len() >= pipeline
            && let Some(done) = pending.join_next().await
        {
            latency.record(done??)?;
        }
        let sent = Instant::now();
        let done = send(size).await?;
        pending.spawn(async move { done.await.map(|()| sent.elapsed().as_micros() as u64) });
    }
    while let Some(done) = pending.join_next().await {
        latency.record(done??)?;
    }
    Ok(latency)
}
