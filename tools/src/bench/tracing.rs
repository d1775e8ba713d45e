//! `courier bench --tracing`: what tracing messages costs. `courier serve` runs once per side and
//! round, each time on a fresh embedded log: traced (`[telemetry.tracing]` on at
//! `--sampling-ratio`, every message by default, the spans exported over OTLP/gRPC to
//! [`receiver`], an OTLP receiver in the bench's process) and off (the same table with
//! `enabled = false`, pointed at the same receiver, which must get nothing from it); with
//! `--baseline BINARY`, that build (one from before tracing, say) as a third side with its default
//! config. The workload is gRPC ProduceStream, the default bench's producers (`grpc.rs`), or with
//! `--mqtt` QoS 1 publish (`mqtt.rs`).
//!
//! The sides take turns, [`ROUNDS`] times, the side that goes first rotating; each process is
//! stopped and its store removed before the next starts, so no side pays for another's leftovers,
//! and each side reports its median round. Each side is a process of its own, as an operator runs
//! it: the traced side is the binary's own `[telemetry.tracing]`, set by environment variables,
//! and another build is compared by the same harness.
//!
//! A traced round's spans are counted once its process stopped (stopping exports what is still
//! queued). The bench's messages carry no trace context, so the gateway records their publishes in
//! root spans that each stand for a batch (`messaging.batch.message_count`: a gRPC request's
//! records, or a client's requests in flight together): the receiver adds those counts up, and at
//! `--sampling-ratio` 1 they must come to every message of the round. Fewer means spans were
//! dropped (the gateway counts them in `courier_tracing_spans_total{outcome="dropped"}`).

mod receiver;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use courier_grpc::proto::v1::{self as pb, admin_client::AdminClient};

use self::receiver::Receiver;
use super::{
    args::BenchArgs,
    grpc::{connect, produce_grpc},
    measure::{Measurement, batches_per_stream},
    mqtt::publish_qos1,
    process::{self, Store, cpu_ticks, start_courier, start_server, stop_process},
};
use crate::client::Credentials;

/// Turns each side takes.
const ROUNDS: usize = 5;

/// The exporter is done with a round once no span has come for this long. Shorter than the batch
/// processor's schedule (5 s): what it holds back, less than a batch, is exported on stopping.
const EXPORT_QUIET: Duration = Duration::from_secs(1);

/// Longest a round waits for its spans after the workload.
const EXPORT_DEADLINE: Duration = Duration::from_secs(120);

/// The gRPC workload's topic.
const TOPIC: &str = "bench";

/// The settings of `[telemetry.tracing]`, as environment variables.
const ENABLED: &str = "COURIER_TELEMETRY__TRACING__ENABLED";
const ENDPOINT: &str = "COURIER_TELEMETRY__TRACING__ENDPOINT";
const SAMPLING_RATIO: &str = "COURIER_TELEMETRY__TRACING__SAMPLING_RATIO";

/// A `courier serve` compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// This build, `[telemetry.tracing]` off.
    Off,
    /// This build, tracing every message.
    Traced,
    /// `--baseline`, its default config.
    Baseline,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Off => "tracing off",
            Side::Traced => "tracing on",
            Side::Baseline => "baseline build",
        }
    }
}

/// What the clients do.
#[derive(Debug, Clone, Copy)]
enum Workload {
    /// `courier bench`'s gRPC producers.
    Produce,
    /// `courier bench --mqtt`'s QoS 1 publishers.
    Publish,
}

/// What one turn of a side measured.
struct Turn {
    measurement: Measurement,
    /// Spans the receiver got from it.
    spans: u64,
    /// Messages those spans stand for.
    messages_in_spans: u64,
    /// CPU time the server used from the workload's start until its spans were exported.
    cpu: Duration,
    /// From the last acknowledgement to the last export before stopping (traced side only).
    export_lag: Duration,
}

impl Turn {
    /// The server's CPU time per message, in microseconds.
    fn cpu_micros(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.measurement.records as f64
    }
}

/// One side's turns.
struct Rounds {
    side: Side,
    turns: Vec<Turn>,
}

/// Runs the rounds and prints the table and ratios.
pub(super) async fn run(args: &BenchArgs) -> Result<()> {
    let workload = if args.mqtt {
        Workload::Publish
    } else {
        Workload::Produce
    };
    let receiver = Receiver::start().await?;
    let baseline = args.baseline.as_ref().map(|_| Side::Baseline);
    let mut sides: Vec<Rounds> = [Side::Off, Side::Traced]
        .into_iter()
        .chain(baseline)
        .map(|side| Rounds {
            side,
            turns: Vec::new(),
        })
        .collect();
    let count = sides.len();
    for round in 0..ROUNDS {
        for turn in 0..count {
            let rounds = &mut sides[(round + turn) % count];
            let measured = measure_round(rounds.side, workload, args, &receiver)
                .await
                .with_context(|| format!("{}, round {}", rounds.side.name(), round + 1))?;
            eprintln!(
                "{}, round {}: {:.0}/s, {} spans",
                rounds.side.name(),
                round + 1,
                measured.measurement.rate(),
                measured.spans
            );
            rounds.turns.push(measured);
        }
    }
    receiver.stop().await?;
    print_results(args, workload, &sides)
}

/// One side's turn: a fresh `courier serve`, the workload against it, the spans it exports
/// meanwhile and after (at most [`EXPORT_DEADLINE`]), then the process stopped (which exports what
/// is still queued) and its store removed.
async fn measure_round(
    side: Side,
    workload: Workload,
    args: &BenchArgs,
    receiver: &Receiver,
) -> Result<Turn> {
    let env = match side {
        Side::Traced => vec![
            (ENABLED, "true".to_owned()),
            (ENDPOINT, receiver.endpoint()),
            (SAMPLING_RATIO, args.sampling_ratio.to_string()),
        ],
        Side::Off => vec![
            (ENABLED, "false".to_owned()),
            (ENDPOINT, receiver.endpoint()),
        ],
        Side::Baseline => Vec::new(),
    };
    let mut env = env;
    env.extend(process::room_for_streams(args.streams));
    let store = Store::Embedded { fsync: &args.fsync };
    let (mut child, line, dir) = match (side, &args.baseline) {
        (Side::Baseline, Some(binary)) => start_server(binary, store, &env)?,
        _ => start_courier(store, &env)?,
    };
    let (spans, messages) = (receiver.spans(), receiver.messages());
    let measured = async {
        let ticks = cpu_ticks(&child)?;
        let measurement = match workload {
            Workload::Produce => produce(address(&line, "grpc=")?, args).await?,
            Workload::Publish => publish_qos1(address(&line, "mqtt=")?, args).await?,
        };
        let export_lag = if side == Side::Traced {
            exported(receiver).await
        } else {
            Duration::ZERO
        };
        let cpu = process::ticks(cpu_ticks(&child)?.saturating_sub(ticks));
        anyhow::Ok((measurement, cpu, export_lag))
    }
    .await;
    stop_process(&mut child);
    drop(dir);
    let (measurement, cpu, export_lag) = measured?;
    Ok(Turn {
        measurement,
        spans: receiver.spans() - spans,
        messages_in_spans: receiver.messages() - messages,
        cpu,
        export_lag,
    })
}

/// Waits until no span has come for [`EXPORT_QUIET`] (at most [`EXPORT_DEADLINE`]), and returns
/// how long after the call the last one came: how far the exporter was behind the workload.
async fn exported(receiver: &Receiver) -> Duration {
    let started = Instant::now();
    let (mut last, mut last_at) = (receiver.spans(), started);
    while last_at.elapsed() < EXPORT_QUIET && started.elapsed() < EXPORT_DEADLINE {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = receiver.spans();
        if now != last {
            (last, last_at) = (now, Instant::now());
        }
    }
    last_at - started
}

/// The gRPC workload against the gateway at `address`: the topic created over Admin, then
/// `courier bench`'s producers.
async fn produce(address: SocketAddr, args: &BenchArgs) -> Result<Measurement> {
    let channel = Credentials::default().on(connect(address, None).await?);
    AdminClient::new(channel.clone())
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: args.partitions,
            ..Default::default()
        })
        .await
        .context("creating the bench topic")?;
    let value = Bytes::from(vec![b'x'; args.record_size]);
    produce_grpc(std::slice::from_ref(&channel), TOPIC, args, &value).await
}

/// The address the ready line names after `key` (`grpc=`, `mqtt=`).
fn address(line: &str, key: &str) -> Result<SocketAddr> {
    let field = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix(key))
        .with_context(|| format!("no {key} in the ready line {line:?}"))?;
    Ok(field.parse()?)
}

/// The parameters; returns the workload's name, its unit and the messages a traced round's spans
/// should stand for at sampling ratio 1.
fn print_parameters(args: &BenchArgs, workload: Workload) -> (&'static str, &'static str, usize) {
    let parameters = match workload {
        Workload::Produce => {
            println!(
                "workload=gRPC ProduceStream records={} record_size={} streams={} batch={} pipeline={} partitions={} fsync={} sampling_ratio={} rounds={ROUNDS} (median)",
                args.records,
                args.record_size,
                args.streams,
                args.batch,
                args.pipeline,
                args.partitions,
                args.fsync,
                args.sampling_ratio
            );
            let records = batches_per_stream(args).iter().flatten().sum();
            ("ProduceStream", "records/s", records)
        }
        Workload::Publish => {
            println!(
                "workload=MQTT QoS 1 publish messages={} payload={} publishers={} inflight={} fsync={} sampling_ratio={} rounds={ROUNDS} (median)",
                args.records,
                args.record_size,
                args.streams,
                args.mqtt_inflight,
                args.fsync,
                args.sampling_ratio
            );
            let messages = args.records / args.streams * args.streams;
            ("QoS 1 publish", "msg/s", messages)
        }
    };
    if let Some(baseline) = &args.baseline {
        println!("baseline={}", baseline.display());
    }
    parameters
}

/// The parameters, each side's rounds, the table of median rounds and the ratios.
fn print_results(args: &BenchArgs, workload: Workload, sides: &[Rounds]) -> Result<()> {
    let (name, unit, messages) = print_parameters(args, workload);
    let each = |turns: &[Turn], show: &dyn Fn(&Turn) -> String| {
        turns.iter().map(show).collect::<Vec<_>>().join(", ")
    };
    for Rounds { side, turns } in sides {
        println!(
            "{}: {unit} per round {}; spans received {} (standing for {} messages); server CPU µs/message {}",
            side.name(),
            each(turns, &|t| format!("{:.0}", t.measurement.rate())),
            each(turns, &|t| t.spans.to_string()),
            each(turns, &|t| t.messages_in_spans.to_string()),
            each(turns, &|t| format!("{:.2}", t.cpu_micros())),
        );
        if *side == Side::Traced {
            let lag = |t: &Turn| format!("{:.1}", t.export_lag.as_secs_f64());
            println!(
                "last span received, s after the last ack: {}",
                each(turns, &lag)
            );
        }
    }
    println!(
        "messages the spans of a traced round should stand for: {messages} at sampling_ratio 1.0, about {:.0} at {}",
        messages as f64 * args.sampling_ratio,
        args.sampling_ratio
    );
    println!();
    println!("| {name} | {unit} | MiB/s | p50 ack ms | p99 ack ms | server CPU µs/message |");
    println!("|---|---:|---:|---:|---:|---:|");
    for Rounds { side, turns } in sides {
        let turn = median_turn(turns)?;
        let m = &turn.measurement;
        println!(
            "| {} | {:.0} | {:.1} | {} | {} | {:.2} |",
            side.name(),
            m.rate(),
            m.rate() * args.record_size as f64 / (1 << 20) as f64,
            m.percentile_ms(0.5),
            m.percentile_ms(0.99),
            turn.cpu_micros()
        );
    }
    println!();
    let find = |side: Side| sides.iter().find(|rounds| rounds.side == side);
    for (with, without, what) in [
        (Side::Traced, Side::Off, "tracing on/off"),
        (Side::Off, Side::Baseline, "tracing off/baseline build"),
    ] {
        let (Some(with), Some(without)) = (find(with), find(without)) else {
            continue;
        };
        let rate = |turns: &[Turn]| median_turn(turns).map(|t| t.measurement.rate());
        // The sides' rounds ran in turn, so the i-th of each are neighbours in time.
        let per_round: Vec<String> = (with.turns.iter().zip(&without.turns))
            .map(|(a, b)| format!("{:.2}", a.measurement.rate() / b.measurement.rate()))
            .collect();
        println!(
            "{name} ratio {what}: {:.2} (median rounds); per round {}",
            rate(&with.turns)? / rate(&without.turns)?,
            per_round.join(", ")
        );
    }
    Ok(())
}

/// The turn with the median rate (the upper one of an even count), as
/// [`measure::median`](super::measure::median) picks.
fn median_turn(turns: &[Turn]) -> Result<&Turn> {
    let mut sorted: Vec<&Turn> = turns.iter().collect();
    sorted.sort_by(|a, b| a.measurement.rate().total_cmp(&b.measurement.rate()));
    sorted
        .get(sorted.len() / 2)
        .copied()
        .context("no rounds were measured")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_from_the_ready_line() {
        let line = "courier ready grpc=127.0.0.1:4100 mqtt=127.0.0.1:4200 http=127.0.0.1:4300 log=embedded region=local anonymous=loopback";
        assert_eq!(
            address(line, "grpc=").unwrap(),
            "127.0.0.1:4100".parse().unwrap()
        );
        assert_eq!(
            address(line, "mqtt=").unwrap(),
            "127.0.0.1:4200".parse().unwrap()
        );
        assert!(address(line, "amqp=").is_err());
    }
}
