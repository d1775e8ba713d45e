//! The client commands (`produce`, `consume`, `topics`, `groups`, `regions`): thin users of the
//! generated gRPC client, the same API any other language gets from `proto/`. Their clap arguments
//! are types only (`client/args.rs`, re-exported here), so they depend on no command. Every call
//! carries the credentials the command was given (`client/credentials.rs`).

use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use courier_grpc::proto::v1::{
    self as pb, admin_client::AdminClient, position::Kind as PositionKind,
    streams_client::StreamsClient, subscribe_request::Kind as RequestKind,
    subscribe_response::Kind as ResponseKind,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};

mod args;
mod credentials;

pub use args::{
    ConsumeArgs, GroupsCommand, ProduceArgs, RegionsCommand, ServerArgs, TopicsCommand,
};
pub use credentials::PASSWORD_ENV;
pub(crate) use credentials::{Api, Credentials, refused};

/// Connects to a gateway, with the credentials `server` names on every call.
pub(crate) async fn connect(server: &ServerArgs) -> Result<Api> {
    let credentials = Credentials::from_args(server)?;
    let channel = courier_grpc::client_endpoint(server.server.clone())
        .with_context(|| {
            format!(
                "{:?} is not a valid server address (use http://host:port)",
                server.server
            )
        })?
        .connect()
        .await
        .with_context(|| format!("connecting to the gateway at {}", server.server))?;
    Ok(credentials.on(channel))
}

/// `courier produce`.
pub async fn produce(args: ProduceArgs) -> Result<()> {
    let mut client = StreamsClient::new(connect(&args.server).await?);
    let (key, headers, partition) = (args.key.clone(), args.headers.clone(), args.partition);
    let record = move |value: String| pb::ProduceRecord {
        key: key.clone().map(Into::into),
        value: Some(value.into()),
        headers: headers
            .iter()
            .map(|(key, value)| pb::Header {
                key: key.clone(),
                value: value.clone().into(),
            })
            .collect(),
        partition,
        timestamp_ms: None,
        courier_id: String::new(),
    };

    let (requests, outbound) = mpsc::channel(64);
    let topic = args.topic.clone();
    let reader = if args.values.is_empty() {
        // Reading stdin blocks, so it runs on its own thread and feeds the stream as lines arrive.
        let batch_size = args.batch.max(1);
        let topic = topic.clone();
        Some(tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut request_id = 0;
            let mut batch = Vec::with_capacity(batch_size);
            for line in std::io::stdin().lock().lines() {
                batch.push(record(line.context("reading stdin")?));
                if batch.len() == batch_size {
                    request_id += 1;
                    let records = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                    let request = pb::ProduceRequest {
                        topic: topic.clone(),
                        records,
                        request_id,
                    };
                    if requests.blocking_send(request).is_err() {
                        bail!("the gateway closed the stream");
                    }
                }
            }
            if !batch.is_empty() {
                request_id += 1;
                let _ = requests.blocking_send(pb::ProduceRequest {
                    topic,
                    records: batch,
                    request_id,
                });
            }
            Ok(request_id)
        }))
    } else {
        let records = args.values.iter().cloned().map(&record).collect();
        requests
            .send(pb::ProduceRequest {
                topic: topic.clone(),
                records,
                request_id: 1,
            })
            .await?;
        drop(requests); // the one request is all: end the stream
        None
    };

    let mut responses = client
        .produce_stream(ReceiverStream::new(outbound))
        .await
        .map_err(refused)
        .context("starting ProduceStream")?
        .into_inner();
    let mut stdout = std::io::stdout().lock();
    let mut total = 0u64;
    let mut failed = 0u64;
    while let Some(response) = responses.next().await {
        let response = response
            .map_err(refused)
            .context("the produce stream failed")?;
        if let Some(error) = response.error {
            eprintln!(
                "request {} failed: {} ({:?})",
                response.request_id,
                error.message,
                tonic::Code::from_i32(error.code)
            );
            failed += 1;
            continue;
        }
        for ack in &response.acks {
            total += 1;
            if !args.quiet {
                writeln!(stdout, "{topic}/{}@{}", ack.partition, ack.offset)?;
            }
        }
    }
    if let Some(reader) = reader {
        reader.await.context("the stdin reader panicked")??;
    }
    eprintln!("produced {total} record(s) to {topic}");
    if failed > 0 {
        bail!("{failed} request(s) failed");
    }
    Ok(())
}

/// Parses `--from`.
fn start_position(from: &str) -> Result<pb::Position> {
    let kind = match from {
        "earliest" => PositionKind::Earliest(true),
        "latest" => PositionKind::Latest(true),
        timestamp if timestamp.starts_with('@') => PositionKind::TimestampMs(
            timestamp[1..]
                .parse()
                .with_context(|| format!("--from {from}: expected @<ms since epoch>"))?,
        ),
        offset => PositionKind::Offset(offset.parse().with_context(|| {
            format!("--from {from}: expected earliest, latest, an offset or @<ms>")
        })?),
    };
    Ok(pb::Position { kind: Some(kind) })
}

/// Opens a Subscribe stream: sends `start`, and returns the sender for acks and the response stream.
pub(crate) async fn open_subscription(
    client: &mut StreamsClient<Api>,
    start: pb::SubscribeStart,
) -> Result<(
    mpsc::Sender<pb::SubscribeRequest>,
    tonic::Streaming<pb::SubscribeResponse>,
)> {
    // Acks are small and the server reads them eagerly; this only bounds a burst of them.
    let (requests, outbound) = mpsc::channel(1024);
    requests
        .send(pb::SubscribeRequest {
            kind: Some(RequestKind::Start(start)),
        })
        .await?;
    let responses = client
        .subscribe(ReceiverStream::new(outbound))
        .await
        .map_err(refused)
        .context("starting Subscribe")?
        .into_inner();
    Ok((requests, responses))
}

/// `courier consume`.
pub async fn consume(args: ConsumeArgs) -> Result<()> {
    let mut client = StreamsClient::new(connect(&args.server).await?);
    let start = pb::SubscribeStart {
        topics: args.topics.clone(),
        topic_pattern: args.pattern.clone().unwrap_or_default(),
        group: args.group.clone().unwrap_or_default(),
        start: Some(start_position(&args.from)?),
        max_in_flight: args.max_in_flight,
    };
    let (requests, mut responses) = open_subscription(&mut client, start).await?;

    let mut stdout = std::io::stdout().lock();
    let mut seen = 0u64;
    loop {
        let next = match args.idle_timeout {
            Some(idle) => match tokio::time::timeout(idle, responses.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => responses.next().await,
        };
        let Some(response) = next else { break };
        let Some(ResponseKind::Records(batch)) = response
            .map_err(refused)
            .context("the subscription failed")?
            .kind
        else {
            continue;
        };
        let mut printed = 0;
        for record in &batch.records {
            if args.count.is_some_and(|count| seen >= count) {
                break;
            }
            print_record(&mut stdout, record, &args.format)?;
            printed += 1;
            seen += 1;
        }
        // Printed (and flushed) first, acknowledged second: at-least-once for whoever reads our stdout.
        stdout.flush()?;
        requests
            .send(pb::SubscribeRequest {
                kind: Some(RequestKind::Ack(pb::Ack {
                    records: Vec::new(),
                    ranges: ack_ranges(&batch.records[..printed]),
                })),
            })
            .await?;
        if args.count.is_some_and(|count| seen >= count) {
            break;
        }
    }
    drop(requests);
    // Drain the stream so the gateway sees the acks before the call ends.
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(std::time::Duration::from_secs(2), responses.next()).await
    {}
    Ok(())
}

/// The acknowledgement of `records` as runs of consecutive offsets of one partition: one
/// `OffsetRange` where single acks would repeat the topic's name for every record. A gap (a
/// compacted topic, transaction markers) starts a new run: the gateway would skip it, but a
/// compacted topic's batch could span more offsets than one ack may.
pub(crate) fn ack_ranges(records: &[pb::Record]) -> Vec<pb::OffsetRange> {
    let mut ranges: Vec<pb::OffsetRange> = Vec::new();
    for record in records {
        match ranges.last_mut() {
            Some(run)
                if run.partition == record.partition
                    && run.topic == record.topic
                    && run.last.checked_add(1) == Some(record.offset) =>
            {
                run.last = record.offset;
            }
            _ => ranges.push(pb::OffsetRange {
                topic: record.topic.clone(),
                partition: record.partition,
                first: record.offset,
                last: record.offset,
            }),
        }
    }
    ranges
}

fn print_record(out: &mut impl Write, record: &pb::Record, format: &str) -> Result<()> {
    let text = |bytes: &Option<bytes::Bytes>| {
        bytes
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    if format == "json" {
        let headers: serde_json::Map<String, serde_json::Value> = record
            .headers
            .iter()
            .map(|h| {
                (
                    h.key.clone(),
                    String::from_utf8_lossy(&h.value).into_owned().into(),
                )
            })
            .collect();
        let json = serde_json::json!({
            "topic": record.topic, "partition": record.partition, "offset": record.offset,
            "key": text(&record.key), "value": text(&record.value), "headers": headers,
            "timestamp_ms": record.timestamp_ms, "courier_id": record.courier_id, "origin": record.origin,
        });
        writeln!(out, "{json}")?;
    } else {
        writeln!(out, "{}", text(&record.value).unwrap_or_default())?;
    }
    Ok(())
}

/// `courier topics`.
pub async fn topics(server: ServerArgs, command: TopicsCommand) -> Result<()> {
    let mut client = AdminClient::new(connect(&server).await?);
    match command {
        TopicsCommand::List => {
            for topic in client
                .list_topics(pb::ListTopicsRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .topics
            {
                println!("{}\t{} partition(s)", topic.name, topic.partitions);
            }
        }
        TopicsCommand::Create {
            name,
            partitions,
            retention,
        } => {
            let request = pb::CreateTopicRequest {
                name,
                partitions,
                retention_ms: retention.map(|r| r.as_millis() as i64),
                retention_bytes: None,
            };
            print_topic(
                &client
                    .create_topic(request)
                    .await
                    .map_err(refused)?
                    .into_inner(),
            );
        }
        TopicsCommand::Describe { name } => print_topic(
            &client
                .describe_topic(pb::DescribeTopicRequest { name })
                .await
                .map_err(refused)?
                .into_inner(),
        ),
        TopicsCommand::Delete { name } => {
            client
                .delete_topic(pb::DeleteTopicRequest { name: name.clone() })
                .await
                .map_err(refused)?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

fn print_topic(topic: &pb::TopicDescription) {
    println!(
        "{}\tretention_ms={}\tretention_bytes={}",
        topic.name, topic.retention_ms, topic.retention_bytes
    );
    for partition in &topic.partitions {
        println!(
            "  partition {}\tlow={}\thigh={}",
            partition.partition, partition.low_watermark, partition.high_watermark
        );
    }
}

/// `courier regions`.
pub async fn regions(server: ServerArgs, command: Option<RegionsCommand>) -> Result<()> {
    let mut client = AdminClient::new(connect(&server).await?);
    let status = match command.unwrap_or(RegionsCommand::List) {
        RegionsCommand::List => client.list_regions(pb::ListRegionsRequest {}).await,
        RegionsCommand::Switch {
            region,
            planned,
            timeout,
        } => {
            client
                .switch_region(pb::SwitchRegionRequest {
                    region,
                    planned,
                    planned_timeout_ms: timeout.as_millis() as u64,
                })
                .await
        }
        RegionsCommand::Auto => {
            client
                .switch_region(pb::SwitchRegionRequest::default())
                .await
        }
    }
    .map_err(refused)?
    .into_inner();
    let routing = if status.manual.is_empty() {
        "automatic".to_owned()
    } else {
        format!("pinned to {}", status.manual)
    };
    println!(
        "mode {}\trouting {routing}\tswitches {}",
        status.mode, status.switches
    );
    for region in &status.regions {
        let traffic: Vec<&str> = [("writes", region.writes), ("reads", region.reads)]
            .into_iter()
            .filter_map(|(name, goes)| goes.then_some(name))
            .collect();
        println!(
            "{}{}\t{}\tsince {}\t{}\t{}",
            region.name,
            if region.preferred { " (preferred)" } else { "" },
            region.health,
            format_time(region.since_ms),
            if traffic.is_empty() {
                "standby".to_owned()
            } else {
                traffic.join("+")
            },
            region.cause
        );
        for lag in &region.replication {
            let behind = match lag.lag_ms {
                Some(ms) => format!("{:.1} s behind", ms as f64 / 1e3),
                None => "no copy seen".to_owned(),
            };
            println!(
                "  copies of {}\t{behind}{}",
                lag.from,
                if lag.stale { " (stale)" } else { "" }
            );
            if let Some(checkpoints) = &lag.checkpoints {
                println!(
                    "  checkpoints of {}\t{}",
                    lag.from,
                    checkpoint_line(checkpoints)
                );
            }
        }
    }
    if let Some(planned) = &status.planned {
        if planned.copied {
            println!(
                "planned switch\t{} -> {}: every acknowledged record copied ({} partitions); writes held {} ms, {} waited",
                planned.from,
                planned.to,
                planned.partitions,
                planned.paused_ms,
                planned.writes_held
            );
        } else {
            println!(
                "planned switch\t{} -> {}: switched after {} ms without every acknowledged record seen copied (an ordinary switch for those): {}",
                planned.from,
                planned.to,
                planned.paused_ms,
                planned.missing.join(", ")
            );
        }
    }
    if let Some(switch) = &status.last_switch {
        println!(
            "last switch\t{} {} -> {} at {}: {}",
            switch.traffic,
            switch.from,
            switch.to,
            format_time(switch.at_ms),
            switch.cause
        );
    }
    Ok(())
}

/// A time in ms since the epoch, as RFC 3339 in UTC.
fn format_time(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime_serde::re::humantime::format_rfc3339_seconds(time).to_string()
}

/// `courier groups`.
pub async fn groups(server: ServerArgs, command: GroupsCommand) -> Result<()> {
    let mut client = AdminClient::new(connect(&server).await?);
    match command {
        GroupsCommand::List => {
            for group in client
                .list_groups(pb::ListGroupsRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .groups
            {
                println!("{group}");
            }
        }
        GroupsCommand::Describe { group } => {
            let group = client
                .describe_group(pb::DescribeGroupRequest { group })
                .await
                .map_err(refused)?
                .into_inner();
            println!("{}\t{} member(s)", group.group, group.members.len());
            for member in &group.members {
                let assigned: Vec<String> = member
                    .assigned
                    .iter()
                    .map(|tp| format!("{}/{}", tp.topic, tp.partition))
                    .collect();
                println!(
                    "  member {} ({}, {})\t{}",
                    member.member_id,
                    member.protocol,
                    member.client,
                    assigned.join(" ")
                );
            }
            for partition in &group.partitions {
                println!(
                    "  {}/{}\tcommitted={}\thigh={}\tlag={}",
                    partition.topic,
                    partition.partition,
                    partition.committed,
                    partition.high_watermark,
                    partition.lag
                );
            }
        }
    }
    Ok(())
}

/// What a region's checkpoints cover of another's groups, on one line: the records a crash would
/// deliver again, and the groups furthest behind.
fn checkpoint_line(coverage: &pb::CheckpointCoverage) -> String {
    let mut line = format!(
        "{} records behind over {} groups",
        coverage.records_behind, coverage.groups
    );
    if coverage.groups_without_checkpoint > 0 {
        line.push_str(&format!(
            " ({} without a checkpoint)",
            coverage.groups_without_checkpoint
        ));
    }
    let furthest: Vec<String> = coverage
        .furthest
        .iter()
        .filter(|group| group.records_behind > 0)
        .take(3)
        .map(|group| match group.checkpoint_age_ms {
            Some(age) => format!(
                "{} {} (checkpoint {:.0} s old)",
                group.group,
                group.records_behind,
                age as f64 / 1e3
            ),
            None => format!("{} {} (no checkpoint)", group.group, group.records_behind),
        })
        .collect();
    if !furthest.is_empty() {
        line.push_str(&format!("; furthest: {}", furthest.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, partition: i32, offset: i64) -> pb::Record {
        pb::Record {
            topic: topic.into(),
            partition,
            offset,
            ..pb::Record::default()
        }
    }

    fn range(topic: &str, partition: i32, first: i64, last: i64) -> pb::OffsetRange {
        pb::OffsetRange {
            topic: topic.into(),
            partition,
            first,
            last,
        }
    }

    /// A run lasts while the partition stays the same and the offsets follow each other; a gap
    /// starts a new one, so no range names an offset that was not received.
    #[test]
    fn a_batch_is_acknowledged_as_runs_of_consecutive_offsets() {
        let records = [
            record("a", 0, 5),
            record("a", 0, 6),
            record("a", 0, 7),
            record("a", 0, 9),
            record("a", 1, 2),
            record("b", 1, 3),
            record("b", 1, 1),
        ];
        assert_eq!(
            ack_ranges(&records),
            vec![
                range("a", 0, 5, 7),
                range("a", 0, 9, 9),
                range("a", 1, 2, 2),
                range("b", 1, 3, 3),
                range("b", 1, 1, 1),
            ]
        );
        assert!(ack_ranges(&[]).is_empty());
    }
}
