//! `courier bench --kafka A --regions B`: what the region router costs while nothing fails. The same
//! gRPC workload runs through a gateway over the plain Kafka backend on cluster `A`, and through a
//! gateway over the region router (`active-passive`, primary `a` = `A`, standby `b` = `B`, default
//! health settings, so `B` is probed but takes no traffic), each on its own topic of `A`. Two rounds,
//! in turn first, so neither side always runs on the fuller broker. With `--kafka mock --regions
//! mock`, `A` and `B` are two of librdkafka's mock clusters, whose topics (the router's canary
//! topic too) the bench makes through their own API.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use courier_gateway::{
    config::{GroupsConfig, RegionsConfig, TopicsConfig},
    log::{Log, layers},
    regions::Regions,
};

use super::{
    args::BenchArgs,
    grpc::{MakeTopic, through_gateway},
    kafka,
    measure::Measurement,
};

const ROUNDS: usize = 2;

/// The gateway's default region settings, active-passive with `a` primary, no regions yet.
fn settings() -> Result<RegionsConfig> {
    toml::from_str("mode = \"active-passive\"\nprimary = \"a\"\nregions = {}\n")
        .context("the benchmark's region settings")
}

/// The topic the router's probes write to and read back (made by the probe where the cluster
/// answers CreateTopics).
pub(super) fn canary_topic() -> Result<String> {
    Ok(settings()?.canary_topic)
}

/// The router over `primary` and `standby`, with the gateway's default region settings.
fn router(primary: &str, standby: &str, args: &BenchArgs) -> Result<Regions> {
    let mut config = settings()?;
    config.regions = [
        ("a".to_owned(), kafka::config(primary, args)),
        ("b".to_owned(), kafka::config(standby, args)),
    ]
    .into();
    Ok(Regions::open(
        &config,
        "a",
        TopicsConfig::default(),
        GroupsConfig::default(),
    )?)
}

/// Runs both sides `ROUNDS` times and prints a markdown table and the ratios; each side's topic is
/// made by `make_topic` when given (librdkafka's mock cluster answers no CreateTopics), else by
/// the gateway's Admin API.
pub(super) async fn run(
    args: &BenchArgs,
    primary: &str,
    standby: &str,
    make_topic: Option<MakeTopic<'_>>,
) -> Result<()> {
    let value = Bytes::from(vec![b'x'; args.record_size]);
    let run = ulid::Ulid::new().to_string().to_lowercase();
    println!(
        "records={} record_size={} streams={} batch={} pipeline={} partitions={} primary={primary} \
         standby={standby}",
        args.records, args.record_size, args.streams, args.batch, args.pipeline, args.partitions
    );
    println!("| round | workload | side | records/s | p50 ack ms | p99 ack ms |");
    println!("|---|---|---|---:|---:|---:|");
    let mut totals = [[0.0_f64; 2]; 2]; // [plain, router][produce, subscribe] records/s
    for round in 1..=ROUNDS {
        // Odd rounds measure the plain side first, even rounds the router first.
        let make = |topic: &str| make_topic.map_or(Ok(()), |make| make(topic, args.partitions));
        let plain = async {
            let topic = format!("bench-plain-{run}-{round}");
            make(&topic)?;
            let log = kafka::backend(&kafka::config(primary, args), "a").await?;
            through_gateway(log, &topic, args, &value).await
        };
        let routed = async {
            let topic = format!("bench-router-{run}-{round}");
            make(&topic)?;
            let log: Arc<dyn Log> = Arc::new(layers::front(
                router(primary, standby, args)?,
                &TopicsConfig::default(),
            ));
            through_gateway(log, &topic, args, &value).await
        };
        let (plain_side, routed_side) = if round % 2 == 1 {
            let plain_side = plain.await?;
            (plain_side, routed.await?)
        } else {
            let routed_side = routed.await?;
            (plain.await?, routed_side)
        };
        for (index, (side, (produced, subscribed))) in [
            ("gRPC over kafka", &plain_side),
            ("gRPC over the region router", &routed_side),
        ]
        .into_iter()
        .enumerate()
        {
            print_row(round, "produce", side, produced);
            print_row(round, "subscribe", side, subscribed);
            totals[index][0] += produced.rate();
            totals[index][1] += subscribed.rate();
        }
    }
    if totals[0][0] == 0.0 || totals[0][1] == 0.0 {
        bail!("the plain side measured nothing");
    }
    println!(
        "produce ratio router/plain: {:.3}",
        totals[1][0] / totals[0][0]
    );
    println!(
        "subscribe ratio router/plain: {:.3}",
        totals[1][1] / totals[0][1]
    );
    Ok(())
}

fn print_row(round: usize, workload: &str, side: &str, m: &Measurement) {
    println!(
        "| {round} | {workload} | {side} | {:.0} | {} | {} |",
        m.rate(),
        m.percentile_ms(0.5),
        m.percentile_ms(0.99)
    );
}
