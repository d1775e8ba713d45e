//! End to end over gRPC with the project's own Rust client (generated from `proto/`): the real binary,
//! real sockets, and assertions on what was acknowledged.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use common::*;
use courier_grpc::proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Two members of a group share the partitions; one disconnects mid-stream without acking part of what
/// it got; the other receives those records again; at the end every record was acknowledged and the
/// only records seen twice are ones that were never acknowledged before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_share_and_survive_a_disconnect() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_GROUPS__COMMIT_INTERVAL", "100ms")],
    )?;
    let (mut admin, topic) = create_topic(&gateway, "orders", 4).await?;
    let group = unique("billing");

    let mut client = gateway.streams().await?;
    let mut first =
        SubscribeStream::open(&mut client, start_in_group(&topic, &group, 1000)).await?;
    let mut second =
        SubscribeStream::open(&mut client, start_in_group(&topic, &group, 1000)).await?;
    // Both hold two partitions before anything is written.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let members = admin
            .describe_group(pb::DescribeGroupRequest {
                group: group.clone(),
            })
            .await?
            .into_inner()
            .members;
        if members.len() == 2 && members.iter().all(|m| m.assigned.len() == 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group did not balance: {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let records: Vec<_> = (0..400)
        .map(|i| record(Some(&format!("customer-{i}")), &format!("order-{i}")))
        .collect();
    let produced = client
        .produce(pb::ProduceRequest {
            topic: topic.clone(),
            records,
            request_id: 7,
        })
        .await?
        .into_inner();
    assert_eq!(produced.request_id, 7);
    assert_eq!(produced.acks.len(), 400);

    // The first member acknowledges half of what it got, then vanishes.
    let mut first_acked = BTreeSet::new();
    let mut first_unacked = BTreeSet::new();
    let batch = first
        .next_records(DEADLINE)
        .await?
        .ok_or("the first member got nothing")?;
    let (ack_now, keep) = batch.split_at(batch.len() / 2);
    first.ack(ack_now).await?;
    first_acked.extend(ack_now.iter().map(value_of));
    first_unacked.extend(keep.iter().map(value_of));
    // Give the acks time to reach the gateway before the stream is cut.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(first);

    let mut second_seen: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let batch = second.next_records(DEADLINE).await?.ok_or_else(|| {
            format!(
                "second member stalled at {} records; log:\n{}",
                second_seen.len(),
                gateway.log()
            )
        })?;
        second.ack(&batch).await?;
        for record in &batch {
            *second_seen.entry(value_of(record)).or_default() += 1;
        }
        let covered: BTreeSet<&String> = first_acked.iter().chain(second_seen.keys()).collect();
        if covered.len() == 400 {
            break;
        }
    }
    let everything: BTreeSet<String> = first_acked
        .iter()
        .chain(second_seen.keys())
        .cloned()
        .collect();
    assert_eq!(
        everything.len(),
        400,
        "every record was delivered and acknowledged"
    );
    for (value, times) in &second_seen {
        assert_eq!(*times, 1, "{value} delivered twice to the survivor");
    }
    let twice: Vec<_> = first_acked
        .iter()
        .filter(|v| second_seen.contains_key(*v))
        .collect();
    assert!(
        twice.is_empty(),
        "acknowledged records were delivered again: {twice:?}"
    );
    assert!(
        first_unacked.iter().all(|v| second_seen.contains_key(v)),
        "unacknowledged records came again"
    );

    // The group commits everything: lag reaches zero.
    loop {
        let described = admin
            .describe_group(pb::DescribeGroupRequest {
                group: group.clone(),
            })
            .await?
            .into_inner();
        if described.partitions.len() == 4 && described.partitions.iter().all(|p| p.lag == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline + DEADLINE,
            "lag stayed: {described:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// A pipelined ProduceStream keeps per-key order and answers each request once; a bad request in the
/// middle is answered with an error and the stream carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_stream_pipelines_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(&dir.path().join("data"), &[])?;
    let topic = unique("stream");
    let mut client = gateway.streams().await?;
    let (requests, outbound) = tokio::sync::mpsc::channel(256);
    let mut responses = client
        .produce_stream(ReceiverStream::new(outbound))
        .await?
        .into_inner();
    for request_id in 0..100u64 {
        let (topic, records) = if request_id == 50 {
            ("bad topic!".to_owned(), vec![record(None, "x")])
        } else {
            (
                topic.clone(),
                (0..10)
                    .map(|i| record(Some("sensor-1"), &format!("{request_id}-{i}")))
                    .collect(),
            )
        };
        requests
            .send(pb::ProduceRequest {
                topic,
                records,
                request_id,
            })
            .await?;
    }
    drop(requests);
    let mut answers = BTreeMap::new();
    while let Some(response) = responses.message().await? {
        assert!(
            answers.insert(response.request_id, response).is_none(),
            "one answer per request"
        );
    }
    assert_eq!(answers.len(), 100);
    let bad = &answers[&50];
    assert_eq!(
        bad.error.as_ref().map(|e| e.code),
        Some(Code::InvalidArgument as i32)
    );
    assert!(
        bad.error
            .as_ref()
            .is_some_and(|e| e.message.contains("bad topic!"))
    );
    let offsets: Vec<i64> = answers
        .values()
        .filter(|a| a.error.is_none())
        .flat_map(|a| a.acks.iter().map(|ack| ack.offset))
        .collect();
    assert_eq!(
        offsets,
        (0..990).collect::<Vec<i64>>(),
        "request order is offset order for one key"
    );
    Ok(())
}

/// Bad input gets a clear status; a client that never acks holds only its own window; other clients
/// carry on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_isolated() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[
            ("COURIER_TOPICS__AUTO_CREATE", "false"),
            ("COURIER_TOPICS__MAX_RECORD_BYTES", "1000"),
            ("COURIER_GRPC__MAX_MESSAGE_BYTES", "65536"),
        ],
    )?;
    let (mut admin, topic) = create_topic(&gateway, "guarded", 2).await?;
    let mut client = gateway.streams().await?;

    let produce = |topic: &str, records| pb::ProduceRequest {
        topic: topic.to_owned(),
        records,
        request_id: 0,
    };
    let status = client
        .produce(produce("no spaces allowed", vec![record(None, "x")]))
        .await
        .err()
        .ok_or("accepted a bad name")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .produce(produce("never-created", vec![record(None, "x")]))
        .await
        .err()
        .ok_or("auto-created")?;
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status
            .message()
            .contains("courier topics create never-created"),
        "{}",
        status.message()
    );
    let status = client
        .produce(produce(&topic, vec![record(None, &"x".repeat(2000))]))
        .await
        .err()
        .ok_or("oversized")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("1000-byte limit"),
        "{}",
        status.message()
    );
    let status = client
        .produce(produce(&topic, vec![record(None, &"x".repeat(100_000))]))
        .await
        .err()
        .ok_or("huge")?;
    assert_eq!(
        status.code(),
        Code::OutOfRange,
        "over the gRPC message limit: {status:?}"
    );
    let mut reserved = record(None, "x");
    reserved.headers.push(pb::Header {
        key: "courier-id".into(),
        value: "spoof".into(),
    });
    assert_eq!(
        client
            .produce(produce(&topic, vec![reserved]))
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    let mut bad_id = record(None, "x");
    bad_id.courier_id = "not-a-ulid".into();
    assert_eq!(
        client
            .produce(produce(&topic, vec![bad_id]))
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    let bad_partition = pb::ProduceRecord {
        partition: Some(9),
        ..record(None, "x")
    };
    assert_eq!(
        client
            .produce(produce(&topic, vec![bad_partition]))
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::InvalidArgument)
    );

    // Subscribe protocol errors.
    let (requests, outbound) = tokio::sync::mpsc::channel(4);
    requests
        .send(pb::SubscribeRequest {
            kind: Some(pb::subscribe_request::Kind::Ack(pb::Ack::default())),
        })
        .await?;
    let status = client
        .subscribe(ReceiverStream::new(outbound))
        .await
        .err()
        .ok_or("ack before start accepted")?;
    assert_eq!(status.code(), Code::InvalidArgument);
    let both = pb::SubscribeStart {
        topic_pattern: "x.*".into(),
        ..start_in_group(&topic, "g", 10)
    };
    assert_eq!(
        SubscribeStream::open(&mut client, both)
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    let bad_regex = pb::SubscribeStart {
        topics: vec![],
        topic_pattern: "(".into(),
        ..start_in_group(&topic, "g", 10)
    };
    assert_eq!(
        SubscribeStream::open(&mut client, bad_regex)
            .await
            .err()
            .map(|s| s.code()),
        Some(Code::InvalidArgument)
    );
    // A window over `groups.max_in_flight` is lowered, not refused
    // (`client_chosen_sizes_are_held_to_the_caps`).
    let mut twice =
        SubscribeStream::open(&mut client, start_in_group(&topic, &unique("g"), 10)).await?;
    twice
        .requests
        .send(pb::SubscribeRequest {
            kind: Some(pb::subscribe_request::Kind::Start(start_in_group(
                &topic, "g", 1,
            ))),
        })
        .await?;
    let status = loop {
        match twice.responses.message().await {
            Err(status) => break status,
            Ok(Some(_)) => continue,
            Ok(None) => return Err("a second start message was accepted".into()),
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument);

    // A reader that never acks holds ten records and no more; a healthy group reads everything.
    let mut stuck =
        SubscribeStream::open(&mut client, start_in_group(&topic, &unique("stuck"), 10)).await?;
    let values: Vec<_> = (0..100).map(|i| record(None, &format!("v{i}"))).collect();
    client.produce(produce(&topic, values)).await?;
    let mut held = 0;
    while let Some(batch) = stuck.next_records(Duration::from_millis(500)).await? {
        held += batch.len();
    }
    assert_eq!(held, 10, "the window bounds what a silent client holds");
    let mut healthy = SubscribeStream::open(
        &mut client,
        start_in_group(&topic, &unique("healthy"), 1000),
    )
    .await?;
    let read = healthy.ack_at_least(100, "the healthy reader").await?;
    assert_eq!(read, 100);

    // Garbage on the socket is one closed connection, nothing more.
    use tokio::io::AsyncWriteExt;
    let mut garbage = tokio::net::TcpStream::connect(gateway.grpc).await?;
    garbage
        .write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff\x13garbage")
        .await?;
    drop(garbage);
    let described = admin
        .describe_topic(pb::DescribeTopicRequest {
            name: topic.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        described
            .partitions
            .iter()
            .map(|p| p.high_watermark)
            .sum::<i64>(),
        100,
        "only the good batch was written"
    );
    let status = client
        .fetch(pb::FetchRequest {
            topic: topic.clone(),
            partition: 0,
            offset: 10_000,
            ..Default::default()
        })
        .await;
    assert_eq!(status.err().map(|s| s.code()), Some(Code::OutOfRange));
    drop((stuck, healthy));
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// Health reports SERVING once ready; Commit and Seek manage an idle group's offsets; Fetch reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fetch_commit_and_seek() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(&dir.path().join("data"), &[])?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(gateway.channel().await?);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "courier.v1.Streams".into(),
        })
        .await?;
    assert_eq!(
        serving.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let (mut admin, topic) = create_topic(&gateway, "ledger", 1).await?;
    let group = unique("auditors");
    let mut client = gateway.streams().await?;
    client
        .produce(pb::ProduceRequest {
            topic: topic.clone(),
            records: (0..10).map(|i| record(None, &format!("e{i}"))).collect(),
            request_id: 1,
        })
        .await?;
    let page = client
        .fetch(pb::FetchRequest {
            topic: topic.clone(),
            partition: 0,
            offset: 3,
            max_records: 2,
            max_bytes: 0,
        })
        .await?
        .into_inner();
    assert_eq!(
        page.records.iter().map(value_of).collect::<Vec<_>>(),
        vec!["e3", "e4"]
    );
    assert_eq!((page.low_watermark, page.high_watermark), (0, 10));

    let offsets = vec![pb::PartitionOffset {
        topic: topic.clone(),
        partition: 0,
        offset: 4,
    }];
    client
        .commit(pb::CommitRequest {
            group: group.clone(),
            offsets,
        })
        .await?;
    let mut member =
        SubscribeStream::open(&mut client, start_in_group(&topic, &group, 100)).await?;
    let batch = member
        .next_records(DEADLINE)
        .await?
        .ok_or("nothing after commit")?;
    assert_eq!(
        batch[0].offset, 4,
        "the group starts at its committed offset"
    );
    let seek = pb::SeekRequest {
        group: group.clone(),
        topic: topic.clone(),
        partition: None,
        position: Some(pb::Position {
            kind: Some(pb::position::Kind::Earliest(true)),
        }),
    };
    assert_eq!(
        client.seek(seek.clone()).await.err().map(|s| s.code()),
        Some(Code::FailedPrecondition),
        "refused while live"
    );
    drop(member);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let moved = loop {
        match client.seek(seek.clone()).await {
            Ok(moved) => break moved.into_inner(),
            Err(status)
                if status.code() == Code::FailedPrecondition
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => return Err(status.into()),
        }
    };
    assert_eq!(moved.offsets[0].offset, 0);
    let mut member =
        SubscribeStream::open(&mut client, start_in_group(&topic, &group, 100)).await?;
    assert_eq!(
        member
            .next_records(DEADLINE)
            .await?
            .ok_or("nothing after seek")?[0]
            .offset,
        0
    );
    let listed = admin
        .list_groups(pb::ListGroupsRequest {})
        .await?
        .into_inner()
        .groups;
    assert!(listed.contains(&group));
    drop(member);
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// What a client chooses is held to the gateway's caps, lowered rather than refused: a Fetch asking
/// for ten million records gets `grpc.max_fetch_records`, and a Subscribe asking for a window of a
/// million gets `groups.max_in_flight` (told in its response metadata), and never has more in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_sizes_are_held_to_the_caps() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[
            ("COURIER_GRPC__MAX_FETCH_RECORDS", "10"),
            ("COURIER_GROUPS__MAX_IN_FLIGHT", "10"),
        ],
    )?;
    let (_, topic) = create_topic(&gateway, "capped", 1).await?;
    let mut client = gateway.streams().await?;
    client
        .produce(pb::ProduceRequest {
            topic: topic.clone(),
            records: (0..50).map(|i| record(None, &format!("c{i}"))).collect(),
            request_id: 1,
        })
        .await?;
    let fetch = |max_records| pb::FetchRequest {
        topic: topic.clone(),
        partition: 0,
        offset: 0,
        max_records,
        max_bytes: 0,
    };
    let page = client.fetch(fetch(10_000_000)).await?.into_inner();
    assert_eq!(page.records.len(), 10);
    assert_eq!(page.high_watermark, 50, "the rest is there to fetch on");
    assert_eq!(client.fetch(fetch(3)).await?.into_inner().records.len(), 3);

    let (requests, outbound) = tokio::sync::mpsc::channel(16);
    let start = start_in_group(&topic, &unique("capped"), 1_000_000);
    requests
        .send(pb::SubscribeRequest {
            kind: Some(pb::subscribe_request::Kind::Start(start)),
        })
        .await?;
    let response = client.subscribe(ReceiverStream::new(outbound)).await?;
    let window = response
        .metadata()
        .get("courier-max-in-flight")
        .ok_or("no courier-max-in-flight in the response metadata")?;
    assert_eq!(window.to_str()?, "10");
    let mut subscriber = SubscribeStream {
        requests,
        responses: response.into_inner(),
    };
    let mut held = Vec::new();
    while held.len() < 10 {
        let batch = subscriber
            .next_records(DEADLINE)
            .await?
            .ok_or("the first window never came")?;
        held.extend(batch);
    }
    assert_eq!(held.len(), 10, "at most the window at once");
    assert!(
        subscriber
            .next_records(Duration::from_millis(500))
            .await?
            .is_none(),
        "nothing past the window before an ack"
    );
    subscriber.ack(&held).await?;
    assert_eq!(subscriber.ack_at_least(10, "the subscriber").await?, 10);
    Ok(())
}

/// Topics created by naming them are taken from the caller's share (`topics.auto_create_per_minute`,
/// 3 here): the fourth topic a caller names is refused with RESOURCE_EXHAUSTED and not created,
/// while another caller (another address) creates its own, and topics that exist go on taking
/// records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_created_by_naming_them_are_taken_from_the_callers_share() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_TOPICS__AUTO_CREATE_PER_MINUTE", "3")],
    )?;
    let produce = |client: pb::streams_client::StreamsClient<tonic::transport::Channel>,
                   topic: String| async move {
        let mut client = client;
        client
            .produce(pb::ProduceRequest {
                topic,
                records: vec![record(None, "x")],
                request_id: 0,
            })
            .await
    };
    let mine = gateway.streams().await?;
    let named: Vec<String> = (0..4).map(|n| unique(&format!("named-{n}"))).collect();
    for topic in &named[..3] {
        produce(mine.clone(), topic.clone()).await?;
    }
    let refused = produce(mine.clone(), named[3].clone())
        .await
        .err()
        .ok_or("a fourth topic was created")?;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("topics.auto_create_per_minute"),
        "{refused:?}"
    );
    let listed = gateway
        .admin()
        .await?
        .list_topics(pb::ListTopicsRequest::default())
        .await?;
    assert!(
        !listed
            .into_inner()
            .topics
            .iter()
            .any(|t| t.name == named[3]),
        "the refused topic exists"
    );
    produce(mine.clone(), named[0].clone()).await?;

    let channel = tonic::transport::Endpoint::from_shared(gateway.url())?
        .local_address(Some("127.0.0.2".parse()?))
        .connect()
        .await?;
    produce(
        pb::streams_client::StreamsClient::new(channel),
        named[3].clone(),
    )
    .await?;
    Ok(())
}

/// Streams past `grpc.max_streaming_calls` are refused at once with RESOURCE_EXHAUSTED, counted in
/// `courier_limit_refusals_total`, while unary calls go on. (The caller's own limit is off: with
/// one place for the gateway, one caller's share is that place too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_and_counted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[
            ("COURIER_GRPC__MAX_STREAMING_CALLS", "1"),
            ("COURIER_GRPC__MAX_STREAMING_CALLS_PER_CALLER", "0"),
        ],
    )?;
    let (_, topic) = create_topic(&gateway, "one-stream", 1).await?;
    let mut client = gateway.streams().await?;
    let _open =
        SubscribeStream::open(&mut client, start_in_group(&topic, &unique("a"), 10)).await?;
    let refused = SubscribeStream::open(&mut client, start_in_group(&topic, &unique("b"), 10))
        .await
        .err()
        .ok_or("a second stream was admitted")?;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("grpc.max_streaming_calls"),
        "{refused:?}"
    );
    client
        .produce(pb::ProduceRequest {
            topic,
            records: vec![record(None, "unary calls go on")],
            request_id: 1,
        })
        .await?;
    scrape::await_series(
        gateway.http,
        &[(
            "courier_limit_refusals_total{protocol=\"grpc\",limit=\"max_streaming_calls\"}",
            1.0,
        )],
    )
    .await?;
    Ok(())
}

/// Acknowledgement by ranges: a range acknowledges every record delivered in it, so a group commits
/// what the ranges covered and no further than the first record they left out; a range backwards,
/// or ranges spanning more than an ack may, end the stream with INVALID_ARGUMENT and acknowledge
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_acknowledge_the_records_they_cover() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(&dir.path().join("data"), &[])?;
    let (_admin, topic) = create_topic(&gateway, "ranged", 1).await?;
    let mut client = gateway.streams().await?;
    client
        .produce(pb::ProduceRequest {
            topic: topic.clone(),
            records: (0..10).map(|i| record(None, &format!("r{i}"))).collect(),
            request_id: 1,
        })
        .await?;
    let start = start_in_group(&topic, &unique("rangers"), 100);
    let range = |first: i64, last: i64| pb::OffsetRange {
        topic: topic.clone(),
        partition: 0,
        first,
        last,
    };

    // Offset 4 is left out; a range past the last record covers nothing more.
    let (mut member, first, seen) = first_of_group(&mut client, &start).await?;
    assert_eq!(first, 0);
    receive_through(&mut member, seen, 9).await?;
    send_ack(&member, Vec::new(), vec![range(0, 3), range(5, 20)]).await?;
    leave(member).await?;
    let (member, first, _) = first_of_group(&mut client, &start).await?;
    assert_eq!(
        first, 4,
        "the commit stops at the record the ranges left out"
    );
    drop(member);

    // Refused: backwards, before the first offset, and more than an ack may span. Nothing of a
    // refused ack counts, its single records neither.
    let four = pb::PartitionOffset {
        topic: topic.clone(),
        partition: 0,
        offset: 4,
    };
    for refused in [
        vec![range(4, 9), range(7, 6)],
        vec![range(-1, 9)],
        vec![range(4, 9), range(0, 140_000)],
    ] {
        let (mut member, _, seen) = first_of_group(&mut client, &start).await?;
        receive_through(&mut member, seen, 9).await?;
        send_ack(&member, vec![four.clone()], refused).await?;
        let status = loop {
            match member.next_records(DEADLINE).await {
                Ok(Some(_)) => {}
                Ok(None) => return Err("the stream ended without a status".into()),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    }
    let (mut member, first, seen) = first_of_group(&mut client, &start).await?;
    assert_eq!(first, 4, "a refused ack acknowledges none of its ranges");

    // All acknowledged: the group reads on after them.
    receive_through(&mut member, seen, 9).await?;
    send_ack(&member, Vec::new(), vec![range(4, 9)]).await?;
    leave(member).await?;
    client
        .produce(pb::ProduceRequest {
            topic: topic.clone(),
            records: vec![record(None, "r10")],
            request_id: 2,
        })
        .await?;
    let (_member, first, _) = first_of_group(&mut client, &start).await?;
    assert_eq!(
        first, 10,
        "every record the ranges covered was acknowledged"
    );
    Ok(())
}

/// A new member of `start`'s group, once the members before it have left (their close commits
/// what they acknowledged), with the first and the highest offset of the first batch it gets.
async fn first_of_group(
    client: &mut pb::streams_client::StreamsClient<tonic::transport::Channel>,
    start: &pb::SubscribeStart,
) -> Result<(SubscribeStream, i64, i64), BoxError> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut member = SubscribeStream::open(client, start.clone()).await?;
        if let Some(batch) = member.next_records(Duration::from_secs(2)).await? {
            let first = batch.first().ok_or("an empty batch")?.offset;
            let highest = batch
                .iter()
                .map(|record| record.offset)
                .max()
                .unwrap_or(first);
            return Ok((member, first, highest));
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the group's records never came again".into());
        }
    }
}

/// Ends `member`'s requests and waits for the gateway to end its stream: acks sent before are
/// applied (dropping the call would cancel it, and acks not yet read with it).
async fn leave(member: SubscribeStream) -> TestResult {
    let SubscribeStream {
        requests,
        mut responses,
    } = member;
    drop(requests);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Some(message) = tokio::time::timeout_at(deadline, responses.message()).await?? {
        drop(message);
    }
    Ok(())
}

/// Reads `member`'s batches, the highest offset received so far `seen`, until `offset` came.
async fn receive_through(member: &mut SubscribeStream, mut seen: i64, offset: i64) -> TestResult {
    while seen < offset {
        let batch = member
            .next_records(DEADLINE)
            .await?
            .ok_or(format!("offset {offset} never came"))?;
        seen = batch
            .iter()
            .map(|record| record.offset)
            .max()
            .unwrap_or(seen);
    }
    Ok(())
}

async fn send_ack(
    member: &SubscribeStream,
    records: Vec<pb::PartitionOffset>,
    ranges: Vec<pb::OffsetRange>,
) -> TestResult {
    member
        .requests
        .send(pb::SubscribeRequest {
            kind: Some(pb::subscribe_request::Kind::Ack(pb::Ack {
                records,
                ranges,
            })),
        })
        .await?;
    Ok(())
}
