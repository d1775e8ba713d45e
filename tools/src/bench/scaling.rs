//! `courier bench --scaling`: how throughput and ack latency change with the number of concurrent
//! streams (or clients) and with the record size, Courier beside its peer, one table per protocol:
//! the default mode's gRPC ProduceStream and Subscribe through `courier serve` against the store
//! written in-process, or with `--mqtt` QoS 1 publish against Mosquitto. Every point is a run of
//! its own on fresh brokers, at each of `--scaling-streams` and `--scaling-sizes`.
//!
//! A point moves at most `records` records and at most [`BYTES_PER_POINT`] bytes, but one record per
//! stream at least, so a 64 KiB point takes seconds rather than minutes yet is long enough for the
//! CPU time read from /proc (10 ms ticks) to mean something; a gRPC request carries at most
//! [`REQUEST_BYTES`] of records and at most one stream's share (a 64 KiB point sends requests of 16
//! records, 4,096 streams of 100 B requests of 48).

use anyhow::Result;

use super::{args::BenchArgs, grpc, measure::Measurement, mqtt};

/// Most bytes one point produces (before the one-record-per-stream floor).
const BYTES_PER_POINT: usize = 256 << 20;

/// Most record bytes one gRPC produce request carries.
const REQUEST_BYTES: usize = 1 << 20;

/// Runs the grid and prints its table.
pub(super) async fn run(args: &BenchArgs) -> Result<()> {
    println!(
        "scaling: {}, each point a run of its own on fresh brokers, at most {} records and {} MiB \
         a point (one record a stream at least); pipeline={} per gRPC stream, {} QoS 1 in flight per \
         MQTT client",
        if args.mqtt {
            "MQTT QoS 1 publish, Courier (embedded) against Mosquitto"
        } else {
            "gRPC through `courier serve` against the embedded store in-process"
        },
        args.records,
        BYTES_PER_POINT >> 20,
        args.pipeline,
        args.mqtt_inflight,
    );
    if args.mqtt {
        print_mqtt_header();
    } else {
        print_grpc_header();
    }
    for &size in &args.scaling_sizes {
        for &streams in &args.scaling_streams {
            let point = point(args, streams, size);
            eprintln!(
                "scaling: {streams} streams of {size}-byte records, {} records",
                point.records
            );
            if args.mqtt {
                let [courier, mosquitto] = mqtt::publish_qos1_on_both(&point).await?;
                print_mqtt_row(&point, &courier, &mosquitto);
            } else {
                let sides = grpc::measure(&point, None).await?;
                print_grpc_row(&point, &sides);
            }
        }
    }
    Ok(())
}

/// The bench's options for one point of the grid.
fn point(args: &BenchArgs, streams: usize, size: usize) -> BenchArgs {
    let records = args.records.min(BYTES_PER_POINT / size.max(1)).max(streams);
    let batch = args
        .batch
        .min(REQUEST_BYTES / size.max(1))
        .min(records / streams)
        .max(1);
    BenchArgs {
        streams,
        record_size: size,
        records,
        batch,
        ..args.clone()
    }
}

fn print_grpc_header() {
    println!(
        "| streams | record bytes | records | batch | direct produce rec/s (p99 ms) | gRPC produce \
         rec/s (p99 ms) | produce ratio | gateway CPU µs/record (produce) | direct subscribe rec/s \
         | gRPC subscribe rec/s | subscribe ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
}

fn print_grpc_row(point: &BenchArgs, sides: &grpc::Sides) {
    let per_record = sides.gateway_cpu.0.as_secs_f64() * 1e6 / point.records as f64;
    println!(
        "| {} | {} | {} | {} | {} | {} | {:.2} | {per_record:.1} | {:.0} | {:.0} | {:.2} |",
        point.streams,
        point.record_size,
        point.records,
        point.batch,
        rate_and_p99(&sides.direct_produce),
        rate_and_p99(&sides.grpc_produce),
        sides.grpc_produce.rate() / sides.direct_produce.rate(),
        sides.direct_subscribe.rate(),
        sides.grpc_subscribe.rate(),
        sides.grpc_subscribe.rate() / sides.direct_subscribe.rate(),
    );
}

fn print_mqtt_header() {
    println!(
        "| clients | record bytes | messages | Courier msg/s (p99 ms) | Mosquitto msg/s (p99 ms) | \
         ratio | Courier CPU µs/msg | Mosquitto CPU µs/msg |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
}

fn print_mqtt_row(point: &BenchArgs, courier: &mqtt::Published, mosquitto: &mqtt::Published) {
    println!(
        "| {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.1} |",
        point.streams,
        point.record_size,
        courier.measurement.records,
        rate_and_p99(&courier.measurement),
        rate_and_p99(&mosquitto.measurement),
        courier.measurement.rate() / mosquitto.measurement.rate(),
        courier.cpu_micros_per_message(),
        mosquitto.cpu_micros_per_message(),
    );
}

fn rate_and_p99(measurement: &Measurement) -> String {
    format!(
        "{:.0} ({})",
        measurement.rate(),
        measurement.percentile_ms(0.99)
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn defaults() -> BenchArgs {
        Cli::parse_from(["bench"]).bench
    }

    /// Small records are capped by `records`, large ones by the bytes a point may move, and no
    /// stream is left without a record nor a request without one.
    #[test]
    fn a_point_is_bounded_by_records_and_bytes_and_feeds_every_stream() {
        let args = defaults();
        let small = point(&args, 1, 100);
        assert_eq!((small.records, small.batch), (args.records, args.batch));
        let large = point(&args, 1, 64 << 10);
        assert_eq!((large.records, large.batch), (4096, 16));
        let many = point(&args, 4096, 64 << 10);
        assert_eq!((many.records, many.batch, many.streams), (4096, 1, 4096));
        let many_small = point(&args, 4096, 100);
        assert_eq!((many_small.records, many_small.batch), (args.records, 48));
    }
}
