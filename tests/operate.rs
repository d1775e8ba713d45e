//! The operators' HTTP endpoint, read as Kubernetes probes and Prometheus would: after known traffic
//! on every protocol `/metrics` shows exactly those counts, `/readyz` turns 503 "draining" as soon as
//! SIGTERM arrives (while a subscriber still holds records), and the status page and its data answer.

mod common;

use std::{process::Command, time::Duration};

use common::{scrape::*, *};
use fe2o3_amqp::{
    Connection, Receiver, Sender, Session,
    types::{messaging::Body, primitives::Value},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_protocols_traffic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(&dir.path().join("data"), &[])?;
    let http = gateway.http;

    // Every series exists before any traffic.
    let (_, before) = tokio::task::block_in_place(|| get(http, "/metrics"))?;
    for protocol in ["grpc", "mqtt", "amqp"] {
        let name = format!("courier_messages_in_total{{protocol=\"{protocol}\"}}");
        assert_eq!(series(&before, &name), Some(0.0), "{name} in:\n{before}");
    }

    // gRPC: 7 records in one request; a group member receives and acknowledges all 7.
    let (_, grpc_topic) = create_topic(&gateway, "ops-grpc", 1).await?;
    let mut client = gateway.streams().await?;
    let records = (0..7).map(|i| record(None, &format!("g{i}"))).collect();
    client
        .produce(courier_grpc::proto::v1::ProduceRequest {
            topic: grpc_topic.clone(),
            records,
            ..Default::default()
        })
        .await?;
    let mut subscriber =
        SubscribeStream::open(&mut client, start_in_group(&grpc_topic, &unique("g"), 100)).await?;
    subscriber.ack_at_least(7, "the gRPC subscriber").await?;

    // MQTT: 5 QoS 1 messages over one connection (each line of stdin is one message).
    let mqtt_port = gateway.mqtt.port().to_string();
    mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt_port,
            "-q",
            "1",
            "-t",
            "ops/mqtt",
            "-l",
        ],
        "m0\nm1\nm2\nm3\nm4\n",
    )?;

    // AMQP: 3 unsettled sends, then a group receiver accepts all 3.
    let amqp_topic = unique("ops-amqp");
    let url = format!("amqp://{}", gateway.amqp);
    let mut connection = Connection::open("ops-test", url.as_str()).await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut sender = Sender::attach(&mut session, "ops-sender", amqp_topic.as_str()).await?;
    for i in 0..3 {
        sender
            .send(format!("a{i}"))
            .await?
            .accepted_or("not accepted")?;
    }
    let source = format!("{amqp_topic}/groups/{}", unique("a"));
    let mut receiver = Receiver::attach(&mut session, "ops-receiver", source.as_str()).await?;
    for _ in 0..3 {
        let delivery = tokio::time::timeout(DEADLINE, receiver.recv::<Body<Value>>()).await??;
        receiver.accept(&delivery).await?;
    }

    let metrics = await_series(
        http,
        &[
            ("courier_messages_in_total{protocol=\"grpc\"}", 7.0),
            ("courier_bytes_in_total{protocol=\"grpc\"}", 14.0),
            ("courier_messages_out_total{protocol=\"grpc\"}", 7.0),
            ("courier_acks_total{protocol=\"grpc\"}", 7.0),
            ("courier_messages_in_total{protocol=\"mqtt\"}", 5.0),
            ("courier_bytes_in_total{protocol=\"mqtt\"}", 10.0),
            ("courier_connections_accepted_total{protocol=\"mqtt\"}", 1.0),
            ("courier_messages_in_total{protocol=\"amqp\"}", 3.0),
            ("courier_messages_out_total{protocol=\"amqp\"}", 3.0),
            ("courier_acks_total{protocol=\"amqp\"}", 3.0),
            ("courier_connections{protocol=\"amqp\"}", 1.0),
            (
                "courier_produce_latency_seconds_count{protocol=\"grpc\"}",
                1.0,
            ),
            (
                "courier_produce_latency_seconds_count{protocol=\"mqtt\"}",
                5.0,
            ),
            (
                "courier_produce_latency_seconds_count{protocol=\"amqp\"}",
                3.0,
            ),
            ("courier_region_up{region=\"local\"}", 1.0),
        ],
    )
    .await?;
    assert!(
        series(&metrics, "courier_connections{protocol=\"grpc\"}").is_some_and(|open| open >= 1.0),
        "the gRPC client's connection is open:\n{metrics}"
    );

    // A refused request is counted by kind: a produce to a topic name Kafka forbids.
    let refused = client
        .produce(courier_grpc::proto::v1::ProduceRequest {
            topic: "not a topic".into(),
            records: vec![record(None, "x")],
            ..Default::default()
        })
        .await;
    assert!(refused.is_err());
    await_series(
        http,
        &[(
            "courier_errors_total{protocol=\"grpc\",kind=\"invalid_topic_name\"}",
            1.0,
        )],
    )
    .await?;

    receiver.close().await?;
    sender.close().await?;
    session.end().await?;
    connection.close().await?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_off_first_when_draining() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(&dir.path().join("data"), &[])?;
    let http = gateway.http;
    assert_eq!(
        tokio::task::block_in_place(|| get(http, "/healthz"))?.0,
        200
    );
    assert_eq!(
        tokio::task::block_in_place(|| get(http, "/readyz"))?,
        (200, "ready\n".to_owned())
    );
    let (status, page) = tokio::task::block_in_place(|| get(http, "/"))?;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Courier status</title>"));
    let (status, json) = tokio::task::block_in_place(|| get(http, "/api/status"))?;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(json["ready"], true);
    assert_eq!(json["regions"][0]["state"], "healthy");
    assert_eq!(json["protocols"].as_array().map(Vec::len), Some(3));

    // A subscriber that holds records unacknowledged keeps the drain open for its ack grace.
    let (_, topic) = create_topic(&gateway, "ops-drain", 1).await?;
    let mut client = gateway.streams().await?;
    client
        .produce(courier_grpc::proto::v1::ProduceRequest {
            topic: topic.clone(),
            records: vec![record(None, "held")],
            ..Default::default()
        })
        .await?;
    let mut subscriber =
        SubscribeStream::open(&mut client, start_in_group(&topic, &unique("d"), 10)).await?;
    subscriber
        .next_records(DEADLINE)
        .await?
        .ok_or("no record to hold")?;

    gateway.send_sigterm()?;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let answer = loop {
        match tokio::task::block_in_place(|| get(http, "/readyz")) {
            Ok((200, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    let (status, body) = answer.map_err(|e| format!("/readyz stopped answering first: {e}"))?;
    assert_eq!((status, body.as_str()), (503, "not ready: draining\n"));
    assert!(gateway.wait_for_exit()?.success());
    Ok(())
}

/// Debian's Chromium (`apt-get install chromium`, done by `scripts/test`), or `COURIER_CHROMIUM`.
fn chromium() -> Result<std::path::PathBuf, String> {
    if let Some(path) = std::env::var_os("COURIER_CHROMIUM") {
        return Ok(path.into());
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|path| path.exists())
        .ok_or_else(|| {
            "chromium is not installed: run ./scripts/test (it installs Debian's chromium), or set \
             COURIER_CHROMIUM"
                .to_owned()
        })
}

/// Runs headless Chromium on `url` with `action` (`--dump-dom` or `--screenshot=...`), letting the
/// page's script run for a few seconds of virtual time first. The flags keep Chromium off the
/// network (this machine has none) and out of any profile but a fresh one.
fn headless_chromium(url: &str, action: &str) -> Result<String, BoxError> {
    let profile = tempfile::tempdir()?;
    let output = Command::new(chromium()?)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,960",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(action)
        .arg(url)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "chromium {action} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// The HTML of the status page's card for `protocol`, as the script filled it.
fn protocol_card<'a>(dom: &'a str, protocol: &str) -> Option<&'a str> {
    let start = dom.find(&format!("data-protocol=\"{protocol}\""))?;
    let card = &dom[start..];
    Some(&card[..card.find("</section>")?])
}

/// The status page, loaded by a real browser while all three protocols carry traffic: its script
/// fetched `/api/status` and filled the cards, the regions and the groups (what a person sees), and
/// a screenshot is taken (the README's, when `COURIER_STATUS_SCREENSHOT` names where to keep it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium() -> TestResult {
    let dir = tempfile::tempdir()?;
    // Samples every 500 ms, so the chart has a line after a few seconds; lag every second.
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[
            ("COURIER_HTTP__PROBE_INTERVAL", "500ms"),
            ("COURIER_HTTP__LAG_INTERVAL", "1s"),
        ],
    )?;
    let stop = tokio_util::sync::CancellationToken::new();
    let group = unique("billing");

    // gRPC: a producer of 10 records every 50 ms and a group member acknowledging them.
    let (_, topic) = create_topic(&gateway, "ops-page", 2).await?;
    let mut client = gateway.streams().await?;
    let grpc = tokio::spawn({
        let (stop, topic, mut client) = (stop.clone(), topic.clone(), client.clone());
        async move {
            while !stop.is_cancelled() {
                let records = (0..10).map(|i| record(None, &format!("p{i}"))).collect();
                let request = courier_grpc::proto::v1::ProduceRequest {
                    topic: topic.clone(),
                    records,
                    ..Default::default()
                };
                client.produce(request).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, tonic::Status>(())
        }
    });
    let mut subscriber =
        SubscribeStream::open(&mut client, start_in_group(&topic, &group, 100)).await?;
    let grpc_reader = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.is_cancelled() {
                if let Some(records) = subscriber.next_records(Duration::from_millis(200)).await? {
                    subscriber
                        .ack(&records)
                        .await
                        .map_err(tonic::Status::internal)?;
                }
            }
            Ok::<_, tonic::Status>(())
        }
    });

    // MQTT: mosquitto_sub on the topic and mosquitto_pub sending a line every 50 ms.
    let mqtt_port = gateway.mqtt.port().to_string();
    let mqtt_args = [
        "-h",
        "127.0.0.1",
        "-p",
        &mqtt_port,
        "-q",
        "1",
        "-t",
        "ops/page",
    ];
    let mut mqtt_subscriber = Command::new("mosquitto_sub")
        .args(mqtt_args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("mosquitto_sub (apt-get install mosquitto-clients): {e}"))?;
    let mut mqtt_publisher = Command::new("mosquitto_pub")
        .args(mqtt_args)
        .arg("-l")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("mosquitto_pub (apt-get install mosquitto-clients): {e}"))?;
    let mut publisher_input = mqtt_publisher.stdin.take().ok_or("no stdin")?;
    let mqtt = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || {
            use std::io::Write;
            let mut n = 0_u64;
            while !stop.is_cancelled() {
                n += 1;
                writeln!(publisher_input, "m{n}")?;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok::<_, std::io::Error>(())
        }
    });

    // AMQP: a sender every 50 ms and a group receiver accepting.
    let amqp_topic = unique("ops-page-amqp");
    let url = format!("amqp://{}", gateway.amqp);
    let mut connection = Connection::open("ops-page", url.as_str()).await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut sender = Sender::attach(&mut session, "page-sender", amqp_topic.as_str()).await?;
    let source = format!("{amqp_topic}/groups/{}", unique("dispatch"));
    let mut receiver = Receiver::attach(&mut session, "page-receiver", source.as_str()).await?;
    let amqp = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0_u64;
            while !stop.is_cancelled() {
                n += 1;
                sender
                    .send(format!("a{n}"))
                    .await?
                    .accepted_or("not accepted")?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sender.close().await?;
            Ok::<_, BoxError>(())
        }
    });
    let amqp_reader = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.is_cancelled() {
                let next = tokio::time::timeout(
                    Duration::from_millis(200),
                    receiver.recv::<Body<Value>>(),
                );
                if let Ok(delivery) = next.await {
                    receiver.accept(&delivery?).await?;
                }
            }
            receiver.close().await?;
            Ok::<_, BoxError>(())
        }
    });

    // A few seconds of traffic, so the page has rates and a chart to draw.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let page = format!("http://{}/", gateway.http);
    let dom = tokio::task::block_in_place(|| headless_chromium(&page, "--dump-dom"))?;
    let shot = dir.path().join("status.png");
    tokio::task::block_in_place(|| {
        headless_chromium(&page, &format!("--screenshot={}", shot.display()))
    })?;
    stop.cancel();

    assert!(
        dom.contains("<body data-loaded=\"true\">"),
        "the page's script never filled it:\n{dom}"
    );
    assert!(
        dom.contains("class=\"badge ok\">ready<"),
        "not shown ready:\n{dom}"
    );
    assert!(
        dom.contains("<td>local</td><td class=\"state-healthy\">healthy</td>"),
        "the region row:\n{dom}"
    );
    assert!(
        dom.contains(&format!("data-group=\"{group}\"")),
        "the group row:\n{dom}"
    );
    for (protocol, name, connections) in [
        ("grpc", "gRPC", 1),
        ("mqtt", "MQTT", 2),
        ("amqp", "AMQP 1.0", 1),
    ] {
        let card =
            protocol_card(&dom, protocol).ok_or_else(|| format!("no {protocol} card:\n{dom}"))?;
        assert!(card.contains(name), "{protocol} card: {card}");
        // The card shows the open connections and totals that grew with the traffic.
        let shown = |field: &str| {
            card.split(&format!("data-field=\"{field}\">"))
                .nth(1)
                .and_then(|rest| rest.split('<').next())
                .map(str::to_owned)
        };
        let open: u64 = shown("connections")
            .ok_or("no connections figure")?
            .parse()?;
        assert!(
            open >= connections,
            "{protocol} card shows {open} connections: {card}"
        );
        let totals = shown("totals").ok_or("no totals")?;
        assert!(
            totals.ends_with(" out since start") && !totals.starts_with("0 in"),
            "{protocol} card shows no messages in: {card}"
        );
    }
    let png = std::fs::read(&shot)?;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    if let Some(keep) = std::env::var_os("COURIER_STATUS_SCREENSHOT") {
        std::fs::write(keep, &png)?;
    }

    grpc.await??;
    grpc_reader.await??;
    mqtt.await??;
    amqp.await??;
    amqp_reader.await??;
    mqtt_publisher.wait()?;
    mqtt_subscriber.kill()?;
    session.end().await?;
    connection.close().await?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// `courier_consumer_lag` has series of their own for the `http.lag_groups` groups furthest behind,
/// and one per topic summing the others under `group="(other)"`; a group that catches up leaves the
/// top and is no longer exported at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_exports_only_the_groups_furthest_behind() -> TestResult {
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(
        &dir.path().join("data"),
        &[
            ("COURIER_HTTP__LAG_GROUPS", "2"),
            ("COURIER_HTTP__LAG_INTERVAL", "200ms"),
        ],
    )?;
    let (_, topic) = create_topic(&gateway, "lagging", 1).await?;
    let mut client = gateway.streams().await?;
    client
        .produce(courier_grpc::proto::v1::ProduceRequest {
            topic: topic.clone(),
            records: (0..10).map(|i| record(None, &format!("l{i}"))).collect(),
            ..Default::default()
        })
        .await?;
    // Four groups, 9, 8, 7 and 6 records behind.
    let groups: Vec<String> = (0..4).map(|i| unique(&format!("lag{i}"))).collect();
    let commit = |group: &str, offset: i64| courier_grpc::proto::v1::CommitRequest {
        group: group.to_owned(),
        offsets: vec![courier_grpc::proto::v1::PartitionOffset {
            topic: topic.clone(),
            partition: 0,
            offset,
        }],
    };
    for (i, group) in groups.iter().enumerate() {
        client.commit(commit(group, i as i64 + 1)).await?;
    }
    let lag = |group: &str| format!("courier_consumer_lag{{group=\"{group}\",topic=\"{topic}\"}}");
    let metrics = await_series(
        gateway.http,
        &[
            (&lag(&groups[0]), 9.0),
            (&lag(&groups[1]), 8.0),
            (&lag("(other)"), 13.0),
        ],
    )
    .await?;
    for group in &groups[2..] {
        assert_eq!(
            series(&metrics, &lag(group)),
            None,
            "{group} in:\n{metrics}"
        );
    }

    // The furthest behind catches up: the third takes its place, and it is summed with the fourth.
    client.commit(commit(&groups[0], 10)).await?;
    let metrics = await_series(
        gateway.http,
        &[
            (&lag(&groups[1]), 8.0),
            (&lag(&groups[2]), 7.0),
            (&lag("(other)"), 6.0),
        ],
    )
    .await?;
    assert_eq!(
        series(&metrics, &lag(&groups[0])),
        None,
        "a group out of the top lingers:\n{metrics}"
    );
    Ok(())
}
