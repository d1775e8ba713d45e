//! `courier bench --kafka A --regions B`: what the region router costs while nothing fails. The same
//! gRPC workload runs through a gateway over the plain Kafka backend on cluster `A`, and through a
//! gateway over the region router (`active-passive`, primary `a` = `A`, standby `b` = `B`, default
//! health settings, so `B` is probed but takes no traffic), each on its own topic of `A`. Two rounds,
//! in turn first, so neither side always runs on the fuller broker.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use courier_gateway::{
    config::{GroupsConfig, RegionsConfig, TopicsConfig},
    log::{Log, layers},
    regions::Regions,
};

use super::{args::BenchArgs, grpc::through_gateway, kafka, measure::Measurement};

const ROUNDS: usize = 2;

/// The router over `primary` and `standby`, with the gateway's default region settings.
fn router(primary: &str, standby: &str, args: &BenchArgs) -> Result<Regions> {
    let mut config: RegionsConfig =
        toml::from_str("mode = \"active-passive\"\nprimary = \"a\"\nregions = {}\n")
            .context("the benchmark's region settings")?;
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

/// Runs both sides `ROUNDS` times and prints a markdown table and the ratios.
pub(super) async fn run(args: &BenchArgs, primary: &str, standby: &str) -> Result<()> {
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
        let plain = async {
            let log = kafka::backend(&kafka::config(primary, args), "a").await?;
            through_gateway(log, &format!("bench-plain-{run}-{round}"), args, &value).await
        };
        let routed = async {
            let log: Arc<dyn Log> = Arc::new(layers::front(
                router(primary, standby, args)?,
                &TopicsConfig::default(),
            ));
            through_gateway(log, &format!("bench-router-{run}-{round}"), args, &value).await
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
