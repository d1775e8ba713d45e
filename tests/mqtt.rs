//! The MQTT endpoint end to end, with the clients devices and applications use: the Mosquitto command
//! line clients and paho-mqtt (Python), in MQTT 3.1.1 and 5, on the embedded log and in front of a
//! Kafka-protocol broker (tansu); a native Kafka client (confluent-kafka) on the other side; and a
//! persistent session that outlives the gateway it was made on.

mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
};

use common::*;
use courier_testkit::Tansu;

/// Runs the paho-mqtt checks in both versions over TCP, and over WebSocket when the gateway serves it.
fn paho_both_versions(gateway: Gateway) -> TestResult {
    let mut runs = vec![(gateway.mqtt, "tcp")];
    runs.extend(gateway.mqtt_ws.map(|address| (address, "websockets")));
    for (address, transport) in runs {
        let port = address.port().to_string();
        for version in ["3.1.1", "5"] {
            let stdout = run_python(
                "mqtt_client_test.py",
                &[
                    "--port",
                    &port,
                    "--version",
                    version,
                    "--transport",
                    transport,
                ],
                &gateway,
            )?;
            assert!(stdout.contains("all checks passed"), "{stdout}");
        }
    }
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[test]
fn paho_mqtt_3_1_1_and_5_over_tcp_and_websocket_on_the_embedded_log() -> TestResult {
    let _serial = one_broker_at_a_time();
    let dir = tempfile::tempdir()?;
    paho_both_versions(Gateway::start(
        &dir.path().join("data"),
        &[("COURIER_MQTT__WEBSOCKET_LISTEN", "127.0.0.1:0")],
    )?)
}

#[test]
fn paho_mqtt_3_1_1_and_5_in_front_of_kafka() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    paho_both_versions(Gateway::start_kafka(
        &dir.path().join("gateway"),
        &broker.bootstrap(),
        &[],
    )?)
}

#[test]
fn mqtt_and_native_kafka_clients_interoperate() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start_kafka(&dir.path().join("gateway"), &broker.bootstrap(), &[])?;
    let port = gateway.mqtt.port().to_string();
    let stdout = run_python(
        "mqtt_kafka_interop_test.py",
        &["--port", &port, "--bootstrap", &broker.bootstrap()],
        &gateway,
    )?;
    assert!(stdout.contains("messages intact both ways"), "{stdout}");
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// mosquitto_sub subscribes with a persistent session and leaves; mosquitto_pub publishes (QoS 1 and 2,
/// user properties, a retained message); mosquitto_sub comes back and gets everything, in both versions.
fn mosquitto_clients_against(gateway: &Gateway) -> TestResult {
    mosquitto_checks(gateway)
        .map_err(|error| format!("{error}\ngateway log:\n{}", gateway.log()).into())
}

fn mosquitto_checks(gateway: &Gateway) -> TestResult {
    let port = gateway.mqtt.port().to_string();
    for (version, flag) in [("mqttv311", "311"), ("mqttv5", "5")] {
        let topic = unique(&format!("cli{flag}"));
        let client_id = unique("mosquitto");
        let common = ["-h", "127.0.0.1", "-p", &port, "-V", version];
        let session = ["-c", "-i", &client_id, "-q", "1"];
        let expiry: &[&str] = if flag == "5" { &["-x", "600"] } else { &[] };
        let filter = format!("{topic}/#");
        mosquitto(
            "mosquitto_sub",
            &[&common[..], &session, expiry, &["-t", &filter, "-E"]].concat(),
            "",
        )?;
        let lines: String = (0..50).map(|i| format!("line-{i}\n")).collect();
        let line_topic = format!("{topic}/lines");
        mosquitto(
            "mosquitto_pub",
            &[&common[..], &["-q", "1", "-t", &line_topic, "-l"]].concat(),
            &lines,
        )?;
        let exact_topic = format!("{topic}/exact");
        let mut publish = vec!["-q", "2", "-t", &exact_topic, "-m", "exactly"];
        if flag == "5" {
            publish.extend(["-D", "publish", "user-property", "site", "lyon"]);
        }
        mosquitto("mosquitto_pub", &[&common[..], &publish].concat(), "")?;

        let output = mosquitto(
            "mosquitto_sub",
            &[
                &common[..],
                &session,
                expiry,
                &["-t", &filter, "-C", "51", "-W", "60", "-F", "%t|%p|%q|%P"],
            ]
            .concat(),
            "",
        )?;
        let received: Vec<&str> = output.lines().collect();
        let lines_received: BTreeSet<&str> = received
            .iter()
            .filter(|line| line.starts_with(&line_topic))
            .copied()
            .collect();
        assert_eq!(lines_received.len(), 50, "{output}");
        let exact: Vec<&&str> = received
            .iter()
            .filter(|line| line.starts_with(&exact_topic))
            .collect();
        assert_eq!(exact.len(), 1, "{output}");
        // Delivered at QoS 1 (the subscription's), with the user property, unaltered, in MQTT 5.
        assert!(
            exact[0].starts_with(&format!("{exact_topic}|exactly|1|")),
            "{output}"
        );
        if flag == "5" {
            assert!(exact[0].contains("site:lyon"), "{output}");
            assert!(!exact[0].contains("courier-id"), "{output}");
        }

        let retained_topic = format!("{topic}/retained");
        mosquitto(
            "mosquitto_pub",
            &[
                &common[..],
                &["-q", "1", "-r", "-t", &retained_topic, "-m", "kept"],
            ]
            .concat(),
            "",
        )?;
        let output = mosquitto(
            "mosquitto_sub",
            &[
                &common[..],
                &[
                    "-t",
                    &retained_topic,
                    "-C",
                    "1",
                    "-W",
                    "30",
                    "-F",
                    "%t|%p|%r",
                ],
            ]
            .concat(),
            "",
        )?;
        assert_eq!(output.trim(), format!("{retained_topic}|kept|1"));
    }
    Ok(())
}

#[test]
fn mosquitto_clients_on_the_embedded_log() -> TestResult {
    let _serial = one_broker_at_a_time();
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start(&dir.path().join("data"), &[])?;
    mosquitto_clients_against(&gateway)?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

#[test]
fn mosquitto_clients_in_front_of_kafka() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start_kafka(&dir.path().join("gateway"), &broker.bootstrap(), &[])?;
    mosquitto_clients_against(&gateway)?;
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// Subscribe with QoS 1 on gateway A and leave; 1,000 messages are published; A dies (kill -9); the
/// client reconnects to gateway B on the same Kafka cluster and receives all 1,000.
#[test]
fn a_persistent_session_outlives_its_gateway() -> TestResult {
    const COUNT: usize = 1000;
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let first = Gateway::start_kafka(&dir.path().join("a"), &broker.bootstrap(), &[])?;
    let second = Gateway::start_kafka(&dir.path().join("b"), &broker.bootstrap(), &[])?;
    let topic = unique("roaming");
    let client_id = unique("roamer");
    let filter = format!("{topic}/#");
    let (first_port, second_port) = (
        first.mqtt.port().to_string(),
        second.mqtt.port().to_string(),
    );
    let session = [
        "-V", "mqttv311", "-c", "-i", &client_id, "-q", "1", "-t", &filter,
    ];
    mosquitto(
        "mosquitto_sub",
        &[
            &["-h", "127.0.0.1", "-p", &first_port][..],
            &session,
            &["-E"],
        ]
        .concat(),
        "",
    )?;
    let lines: String = (0..COUNT).map(|i| format!("message-{i}\n")).collect();
    let publish_topic = format!("{topic}/data");
    mosquitto(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &first_port,
            "-q",
            "1",
            "-t",
            &publish_topic,
            "-l",
        ],
        &lines,
    )?;
    first.kill9()?;

    let count = COUNT.to_string();
    let output = mosquitto(
        "mosquitto_sub",
        &[
            &["-h", "127.0.0.1", "-p", &second_port][..],
            &session,
            &["-C", &count, "-W", "90"],
        ]
        .concat(),
        "",
    )
    .map_err(|e| format!("{e}\ngateway B log:\n{}", second.log()))?;
    let received: BTreeSet<&str> = output.lines().collect();
    let missing: Vec<usize> = (0..COUNT)
        .filter(|i| !received.contains(format!("message-{i}").as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "lost {} messages: {missing:?}",
        missing.len()
    );
    assert!(second.terminate()?.success());
    Ok(())
}

/// MQTT 3.1.1 CONNECT (keep-alive 60 s) as raw bytes, and the CONNACK accepting it; returns the
/// stream and CONNACK's session-present flag.
fn raw_connect(
    address: std::net::SocketAddr,
    client_id: &str,
    clean_session: bool,
) -> Result<(TcpStream, bool), BoxError> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    let flags = if clean_session { 0x02 } else { 0x00 };
    let mut packet = vec![0x10, u8::try_from(12 + client_id.len())?, 0, 4];
    packet.extend_from_slice(b"MQTT\x04");
    packet.extend_from_slice(&[flags, 0x00, 0x3c]);
    packet.extend_from_slice(&u16::try_from(client_id.len())?.to_be_bytes());
    packet.extend_from_slice(client_id.as_bytes());
    stream.write_all(&packet)?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack)?;
    assert!(
        connack[..2] == [0x20, 0x02] && connack[3] == 0,
        "CONNACK accepting the client: {connack:?}"
    );
    Ok((stream, connack[2] == 1))
}

/// Reads the next `expected.len()` bytes and checks they are `expected` (`what` names the packet).
fn expect_bytes(stream: &mut TcpStream, expected: &[u8], what: &str) -> TestResult {
    let mut got = vec![0u8; expected.len()];
    stream.read_exact(&mut got)?;
    assert_eq!(got, expected, "expected {what}");
    Ok(())
}

/// One live connection per client id across replicas: a client connected to gateway A is closed when a
/// connection with its client id reaches gateway B. (Raw MQTT 3.1.1 bytes: the clients above reconnect
/// on their own, which would hide the takeover.)
#[test]
fn a_connection_on_another_gateway_takes_the_client_id_over() -> TestResult {
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let first = Gateway::start_kafka(&dir.path().join("a"), &broker.bootstrap(), &[])?;
    let second = Gateway::start_kafka(&dir.path().join("b"), &broker.bootstrap(), &[])?;
    let client_id = unique("twin");
    let (mut on_first, _) = raw_connect(first.mqtt, &client_id, true)?;
    let _on_second = raw_connect(second.mqtt, &client_id, true)?;
    // Gateway A closes its connection: read returns EOF (0) rather than timing out.
    let mut byte = [0u8; 1];
    let read = on_first.read(&mut byte);
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the first connection is still open: {read:?}\ngateway A log:\n{}",
        first.log()
    );
    assert!(first.terminate()?.success());
    assert!(second.terminate()?.success());
    Ok(())
}

/// QoS 2 through a gateway crash (kill -9): the gateway stored the message and sent PUBREC, which is
/// lost with it as far as the client knows. The client reconnects to the restarted gateway and sends
/// the PUBLISH again with DUP, as MQTT asks; it gets PUBREC, PUBREL, PUBCOMP, and the message is stored
/// once. The released packet id then carries a new message, which is stored too. (Raw MQTT 3.1.1
/// bytes: a client library does not resend on cue.)
#[test]
fn a_qos2_message_sent_again_after_a_gateway_crash_is_stored_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let gateway = Gateway::start(&data, &[])?;
    let client_id = unique("exact");
    let (first, second) = (unique("once"), unique("next"));
    let publish =
        |payload: &str, dup: bool| publish_packet(b"exact/once", 2, dup, 7, payload.as_bytes());
    const PUBREC: [u8; 4] = [0x50, 0x02, 0, 7];
    const PUBREL: [u8; 4] = [0x62, 0x02, 0, 7];
    const PUBCOMP: [u8; 4] = [0x70, 0x02, 0, 7];

    let (mut stream, _) = raw_connect(gateway.mqtt, &client_id, false)?;
    stream.write_all(&publish(&first, false)?)?;
    expect_bytes(&mut stream, &PUBREC, "PUBREC before the crash")?;
    gateway.kill9()?;

    let gateway = Gateway::start(&data, &[])?;
    let (mut stream, session_present) = raw_connect(gateway.mqtt, &client_id, false)?;
    assert!(session_present, "the session outlived the crash");
    stream.write_all(&publish(&first, true)?)?;
    expect_bytes(&mut stream, &PUBREC, "PUBREC for the retransmission")?;
    stream.write_all(&PUBREL)?;
    expect_bytes(&mut stream, &PUBCOMP, "PUBCOMP")?;
    stream.write_all(&publish(&second, false)?)?;
    expect_bytes(
        &mut stream,
        &PUBREC,
        "PUBREC for a new message with the same id",
    )?;
    stream.write_all(&PUBREL)?;
    expect_bytes(&mut stream, &PUBCOMP, "PUBCOMP")?;

    let stored =
        tokio::runtime::Runtime::new()?.block_on(stored_values(&gateway, "mqtt.messages"))?;
    let copies = |payload: &String| stored.iter().filter(|value| *value == payload).count();
    assert_eq!(
        copies(&first),
        1,
        "the retransmitted message is stored once\ngateway log:\n{}",
        gateway.log()
    );
    assert_eq!(copies(&second), 1, "the new message is stored");
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// A raw MQTT 3.1.1 PUBLISH at QoS 1 or 2 (short enough for a one-byte length).
fn publish_packet(
    topic: &[u8],
    qos: u8,
    dup: bool,
    pkid: u16,
    payload: &[u8],
) -> Result<Vec<u8>, BoxError> {
    let mut packet = vec![0x30 | (qos << 1) | if dup { 0x08 } else { 0 }];
    packet.push(u8::try_from(2 + topic.len() + 2 + payload.len())?);
    packet.extend_from_slice(&u16::try_from(topic.len())?.to_be_bytes());
    packet.extend_from_slice(topic);
    packet.extend_from_slice(&pkid.to_be_bytes());
    packet.extend_from_slice(payload);
    Ok(packet)
}

/// Reads one PUBLISH the server sends (QoS 1 or 2, short enough for a one-byte length): its packet
/// id and payload.
fn read_publish(stream: &mut TcpStream) -> Result<(u16, Vec<u8>), BoxError> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header)?;
    assert_eq!(
        header[0] >> 4,
        3,
        "expected a PUBLISH, got packet type {}",
        header[0] >> 4
    );
    assert!(header[1] < 0x80, "a PUBLISH longer than this test reads");
    let mut body = vec![0u8; usize::from(header[1])];
    stream.read_exact(&mut body)?;
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let pkid_at = 2 + topic_len;
    let pkid = u16::from_be_bytes([body[pkid_at], body[pkid_at + 1]]);
    Ok((pkid, body[pkid_at + 2..].to_vec()))
}

/// QoS 2 to a subscriber through a gateway crash (kill -9): it got the message, sent PUBREC and got
/// PUBREL, and the gateway died before PUBCOMP and before its group committed (the commit interval
/// is an hour here). Back on the restarted gateway, the session sends that PUBREL again, first (a
/// client such as paho hands the message over only then), and does not deliver the message a second
/// time although its group reads it again; the next message comes next.
#[test]
fn a_qos2_delivery_survives_a_gateway_crash_exactly_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let env = [("COURIER_GROUPS__COMMIT_INTERVAL", "1h")];
    let gateway = Gateway::start(&data, &env)?;
    let subscriber_id = unique("receiver");
    let topic = b"exact/out";
    let subscribe = {
        let mut packet = vec![0x82, u8::try_from(2 + 2 + topic.len() + 1)?, 0, 1];
        packet.extend_from_slice(&u16::try_from(topic.len())?.to_be_bytes());
        packet.extend_from_slice(topic);
        packet.push(2); // QoS 2
        packet
    };
    let send_qos1 = |address, payload: &[u8], pkid: u16| -> TestResult {
        let (mut publisher, _) = raw_connect(address, &unique("sender"), true)?;
        publisher.write_all(&publish_packet(topic, 1, false, pkid, payload)?)?;
        let [high, low] = pkid.to_be_bytes();
        expect_bytes(&mut publisher, &[0x40, 0x02, high, low], "PUBACK")
    };

    let (mut subscriber, _) = raw_connect(gateway.mqtt, &subscriber_id, false)?;
    subscriber.write_all(&subscribe)?;
    expect_bytes(
        &mut subscriber,
        &[0x90, 0x03, 0, 1, 2],
        "SUBACK granting QoS 2",
    )?;
    send_qos1(gateway.mqtt, b"first", 1)?;
    let (pkid, payload) = read_publish(&mut subscriber)?;
    assert_eq!(payload, b"first");
    let [high, low] = pkid.to_be_bytes();
    subscriber.write_all(&[0x50, 0x02, high, low])?;
    expect_bytes(&mut subscriber, &[0x62, 0x02, high, low], "PUBREL")?;
    gateway.kill9()?;

    let gateway = Gateway::start(&data, &env)?;
    let (mut subscriber, session_present) = raw_connect(gateway.mqtt, &subscriber_id, false)?;
    assert!(session_present, "the session outlived the crash");
    expect_bytes(
        &mut subscriber,
        &[0x62, 0x02, high, low],
        "the PUBREL again, first",
    )
    .map_err(|e| format!("{e}\ngateway log:\n{}", gateway.log()))?;
    subscriber.write_all(&[0x70, 0x02, high, low])?;
    send_qos1(gateway.mqtt, b"second", 2)?;
    let (_, payload) = read_publish(&mut subscriber)?;
    assert_eq!(
        String::from_utf8_lossy(&payload),
        "second",
        "the message after the one already delivered, not that one again"
    );
    assert!(gateway.terminate()?.success());
    Ok(())
}

/// A shared subscription across replicas: one member on each of two gateways over one Kafka
/// cluster (`$share/<g>/...` is one consumer group); 200 messages from sixteen devices, published
/// through gateway A, all reach the group, spread over both members.
#[test]
fn a_shared_subscription_spreads_over_replicas() -> TestResult {
    const COUNT: usize = 200;
    let _serial = one_broker_at_a_time();
    let broker = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let first = Gateway::start_kafka(&dir.path().join("a"), &broker.bootstrap(), &[])?;
    let second = Gateway::start_kafka(&dir.path().join("b"), &broker.bootstrap(), &[])?;
    let topic = unique("fleet");
    let share = format!("$share/{}/{topic}/#", unique("dispatch"));
    let member = |gateway: &Gateway| {
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &gateway.mqtt.port().to_string()])
            .args(["-V", "mqttv5", "-q", "1", "-t", &share, "-W", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("mosquitto_sub (apt-get install mosquitto-clients): {e}"))
    };
    let members = [member(&first)?, member(&second)?];
    // Both members have joined the group and hold partitions before anything is published.
    std::thread::sleep(std::time::Duration::from_secs(5));
    // Sixteen trucks: the MQTT topic is the record key, so one truck's messages share a partition
    // (and a member); sixteen keys land on more than one of the topic's partitions.
    for truck in 0..16 {
        let lines: String = (0..COUNT)
            .filter(|i| i % 16 == truck)
            .map(|i| format!("m{i}\n"))
            .collect();
        mosquitto(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &first.mqtt.port().to_string(),
                "-q",
                "1",
                "-t",
                &format!("{topic}/truck-{truck}"),
                "-l",
            ],
            &lines,
        )?;
    }
    let mut received = Vec::new();
    for member in members {
        // `-W 20`: each member exits 20 s after it started, printing what it got.
        let output = member.wait_with_output()?;
        received.push(
            String::from_utf8(output.stdout)?
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
    }
    let all: BTreeSet<&str> = received.iter().flatten().map(String::as_str).collect();
    let missing: Vec<String> = (0..COUNT)
        .map(|i| format!("m{i}"))
        .filter(|m| !all.contains(m.as_str()))
        .collect();
    let duplicates = received.iter().map(Vec::len).sum::<usize>() - all.len();
    eprintln!(
        "shared subscription: members got {} and {} of {COUNT}, {duplicates} twice",
        received[0].len(),
        received[1].len()
    );
    assert!(
        missing.is_empty(),
        "{} messages reached no member, e.g. {:?}; gateway A log:\n{}",
        missing.len(),
        missing.first(),
        first.log()
    );
    // Both members joined before the first publish, so duplicates would only come from a rebalance
    // (at-least-once allows them); they are printed, not refused.
    assert!(
        received.iter().all(|got| !got.is_empty()),
        "the group's messages were not spread over both replicas' members"
    );
    assert!(first.terminate()?.success());
    assert!(second.terminate()?.success());
    Ok(())
}
