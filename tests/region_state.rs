//! Device state across regions, end to end: two tansu processes are two regions, test replicators
//! copy between them in MirrorMaker 2's formats (the messages, the compacted MQTT tables and the
//! session groups' checkpoints), and the real `courier` binary routes over both. An MQTT 5 device
//! with a persistent session, retained messages and an unfinished QoS 2 exchange in region `a`
//! finds all of it through region `b` when `a` is lost, changes it there, and finds `b`'s version
//! back in `a`, whose own older copy of the same state is still there.
//!
//! Region `a` is lost by freezing its broker (SIGSTOP), a cluster that stops answering and comes
//! back with its data: only then does `a` hold an older copy of what `b` changed, which is what the
//! newest-wins merge must decide (a region rebuilt empty holds nothing to disagree with).

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use common::{
    BoxError, DEADLINE, Gateway, TestResult,
    mqtt5::RawMqtt5,
    record,
    regions::{regions_config, traffic_on, wait_for_traffic_on, wait_until},
    replicator::Replicator,
    stored_values,
};
use courier_grpc::proto::v1::{self as pb, admin_client::AdminClient};
use courier_testkit::Tansu;
use rumqttc::v5::mqttbytes::{
    QoS,
    v5::{Packet, PubCompReason},
};
use tonic::transport::Channel;

const DEVICE: &str = "truck-7";
/// Commands for the device, queued while it is away.
const COMMANDS: &str = "fleet/truck-7/commands";
/// Retained, changed in `b`.
const CONFIG: &str = "fleet/truck-7/config";
/// Retained, never changed.
const FIRMWARE: &str = "fleet/truck-7/firmware";
/// The device's own QoS 2 message, left unfinished.
const TELEMETRY: &str = "fleet/truck-7/telemetry";
/// Subscribed to in `b`.
const UPDATES: &str = "fleet/truck-7/updates";
/// Delivered while the device was connected in `a`, before it left.
const SEEN: usize = 10;
/// Queued while it was away.
const QUEUED: usize = 200;
/// The QoS 2 packet id left unfinished.
const EXCHANGE: u16 = 7;

/// The two tests start two brokers and a gateway each: one at a time, as on two cores several at
/// once slow group rebalances past the clients' deadlines.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest the whole journey may take (it takes about 20 s).
const JOURNEY_LIMIT: Duration = Duration::from_secs(180);

/// Where the MQTT endpoint keeps its messages and tables, all mirrored.
const TOPICS: [&str; 4] = [
    "mqtt.messages",
    "mqtt.sessions",
    "mqtt.retained",
    "mqtt.qos2",
];

/// Two regions (tansu), a test replicator each way, and a gateway routing over both with `a`
/// primary and no automatic fail-back (the tests move traffic back with a planned switch).
struct Stage {
    a: Tansu,
    _b: Tansu,
    a_to_b: Replicator,
    b_to_a: Replicator,
    gateway: Gateway,
    _dir: tempfile::TempDir,
}

impl Stage {
    /// Replicating `topics` and checkpointing `groups` both ways; traffic on `a`.
    async fn start(topics: &[&str], groups: &[&str]) -> Result<Self, BoxError> {
        let a = Tansu::start()?;
        let b = Tansu::start()?;
        let a_to_b = Replicator::start("a", &a.bootstrap(), &b.bootstrap(), topics, groups);
        let b_to_a = Replicator::start("b", &b.bootstrap(), &a.bootstrap(), topics, groups);
        let dir = tempfile::tempdir()?;
        let gateway = Gateway::start_with_config(
            &dir.path().join("gateway"),
            &regions_config("a", "active-passive", &a, &b, "600s"),
            &[],
        )?;
        wait_for_traffic_on(&mut gateway.admin().await?, "a", DEADLINE).await?;
        Ok(Self {
            a,
            _b: b,
            a_to_b,
            b_to_a,
            gateway,
            _dir: dir,
        })
    }

    /// Runs `journey` within `JOURNEY_LIMIT`; a failure carries the gateway's log.
    async fn run(
        self,
        journey: impl AsyncFnOnce(&Stage, &mut AdminClient<Channel>) -> TestResult,
    ) -> TestResult {
        let mut admin = self.gateway.admin().await?;
        let outcome = match tokio::time::timeout(JOURNEY_LIMIT, journey(&self, &mut admin)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("the journey did not end within {JOURNEY_LIMIT:?}").into()),
        };
        if let Err(error) = outcome {
            return Err(format!("{error}\ngateway log:\n{}", self.gateway.log()).into());
        }
        let Self {
            a_to_b,
            b_to_a,
            gateway,
            ..
        } = self;
        drop((a_to_b, b_to_a));
        gateway.terminate()?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_device_keeps_its_session_across_a_lost_region_and_back() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    // MirrorMaker 2's default `groups = .*`: the session's groups appear as the device subscribes.
    let stage = Stage::start(&TOPICS, &["mqtt.session.*"]).await?;
    stage.run(journey).await
}

/// The device in a, then in b while a is lost, then in a again.
async fn journey(stage: &Stage, admin: &mut AdminClient<Channel>) -> TestResult {
    let Stage {
        a,
        a_to_b,
        b_to_a,
        gateway,
        ..
    } = stage;
    let log = || gateway.log();

    // In a: the device's persistent session, retained messages, what it was sent while connected.
    let (mut device, connack) = RawMqtt5::connect(gateway.mqtt, DEVICE, false, 3600).await?;
    assert!(!connack.session_present);
    device.subscribe(1, COMMANDS, QoS::AtLeastOnce).await?;
    let (mut dispatch, _) = RawMqtt5::connect(gateway.mqtt, "dispatch", true, 0).await?;
    dispatch.publish_acked(1, CONFIG, "config-1", true).await?;
    dispatch
        .publish_acked(2, FIRMWARE, "firmware-1", true)
        .await?;
    for i in 0..SEEN {
        dispatch
            .publish_acked(3 + i as u16, COMMANDS, &format!("seen-{i}"), false)
            .await?;
    }
    let seen = receive(&mut device, SEEN, &HashSet::new()).await?;
    assert_eq!(seen.len(), SEEN, "{seen:?}\n{}", log());
    // The device publishes at QoS 2 and leaves after PUBREC, before its PUBREL.
    let mut telemetry =
        rumqttc::v5::mqttbytes::v5::Publish::new(TELEMETRY, QoS::ExactlyOnce, "odometer-1", None);
    telemetry.pkid = EXCHANGE;
    device.send(Packet::Publish(telemetry)).await?;
    match device.read().await? {
        Some(Packet::PubRec(pubrec)) if pubrec.pkid == EXCHANGE => {}
        other => return Err(format!("expected PUBREC {EXCHANGE}, got {other:?}").into()),
    }
    device.disconnect().await?;

    // Queued while it is away.
    let queued: Vec<String> = (0..QUEUED).map(|i| format!("command-{i}")).collect();
    for (i, command) in queued.iter().enumerate() {
        dispatch
            .publish_acked(100 + i as u16, COMMANDS, command, false)
            .await?;
    }

    // Everything copied to b before a is lost (what is not is the loss window, measured elsewhere):
    // the commands, the retained messages, the session as the device left it, its QoS 2 entry,
    // and its group's position past what it was sent in a.
    wait_until("a's state copied to b", DEADLINE, || {
        let commands: HashSet<String> = a_to_b
            .copied_values_of("mqtt.messages")
            .into_iter()
            .collect();
        let retained = a_to_b.copied_values_of("mqtt.retained");
        queued.iter().all(|command| commands.contains(command))
            && retained.iter().any(|v| v == "firmware-1")
            && a_to_b
                .copied_values_of("mqtt.sessions")
                .iter()
                .any(|v| left(v))
            && !a_to_b.copied_values_of("mqtt.qos2").is_empty()
            && a_to_b
                .checkpointed("mqtt.session.")
                .iter()
                .any(|(_, upstream)| *upstream >= SEEN as i64)
    })
    .await
    .map_err(|error| format!("{error}\n{}", log()))?;

    // Region a is lost.
    a.freeze();
    wait_for_traffic_on(admin, "b", DEADLINE)
        .await
        .map_err(|error| format!("{error}\n{}", log()))?;

    // Through b: the session is there, with its subscription and its queued commands from the
    // checkpointed position (nothing it was sent in a again), its QoS 2 exchange completed once.
    let (mut device, connack) = RawMqtt5::connect(gateway.mqtt, DEVICE, false, 3600).await?;
    assert!(
        connack.session_present,
        "the session did not follow the device to b\n{}",
        log()
    );
    device.pubrel(EXCHANGE).await?;
    let got = receive_until_pubcomp(&mut device, QUEUED).await?;
    assert_eq!(
        got.pubcomp,
        Some(PubCompReason::Success),
        "PUBREL {EXCHANGE} in b\n{}",
        log()
    );
    let missing: Vec<&String> = queued
        .iter()
        .filter(|c| !got.commands.contains_key(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "queued commands not delivered in b: {missing:?}\n{}",
        log()
    );
    let again: Vec<&String> = got
        .commands
        .keys()
        .filter(|c| c.starts_with("seen-"))
        .collect();
    assert!(
        again.is_empty(),
        "delivered in a before the switch, and again in b (the checkpoint was not used): {again:?}"
    );
    let duplicates: usize = got.commands.values().map(|n| n - 1).sum();
    println!("STATE mqtt5 device in b: {QUEUED} queued commands delivered, {duplicates} twice");
    // Retained messages as they were.
    let mut others = Vec::new();
    device.subscribe(2, CONFIG, QoS::AtLeastOnce).await?;
    assert_eq!(
        next_on(&mut device, CONFIG, true, &mut others).await?,
        "config-1"
    );
    device.subscribe(3, FIRMWARE, QoS::AtLeastOnce).await?;
    assert_eq!(
        next_on(&mut device, FIRMWARE, true, &mut others).await?,
        "firmware-1"
    );
    assert!(others.is_empty(), "{others:?}");
    // The QoS 2 message was stored once, in a, and copied.
    let stored = stored_values(gateway, "mqtt.messages").await?;
    assert_eq!(
        stored.iter().filter(|v| *v == "odometer-1").count(),
        1,
        "{stored:?}"
    );

    // Changes in b: a new retained config, a new subscription.
    let (mut dispatch, _) = RawMqtt5::connect(gateway.mqtt, "dispatch", true, 0).await?;
    dispatch.publish_acked(1, CONFIG, "config-2", true).await?;
    device.subscribe(4, UPDATES, QoS::AtLeastOnce).await?;
    device.disconnect().await?;

    // a comes back with its data, older than b's; the operator moves traffic back once what
    // was acknowledged in b has been copied to a.
    a.thaw();
    let switched = tokio::time::timeout(
        DEADLINE * 4,
        admin.switch_region(pb::SwitchRegionRequest {
            region: "a".into(),
            planned: true,
            planned_timeout_ms: 90_000,
        }),
    )
    .await
    .map_err(|_| format!("the planned switch back did not answer\n{}", log()))?
    .map_err(|status| format!("{status}\n{}", log()))?
    .into_inner();
    let planned = switched.planned.ok_or("no planned switch outcome")?;
    assert!(planned.copied, "{planned:?}\n{}", log());
    assert!(traffic_on(admin, "a").await);
    assert!(
        b_to_a
            .copied_values_of("mqtt.retained")
            .iter()
            .any(|v| v == "config-2")
    );

    // In a: b's version of the session and of the retained config, not a's own older one.
    let (mut device, connack) = RawMqtt5::connect(gateway.mqtt, DEVICE, false, 3600).await?;
    assert!(connack.session_present, "{}", log());
    // The exchange completed in b is over in a too (b's deletion is newer than a's entry).
    device.pubrel(EXCHANGE).await?;
    match device.read().await? {
        Some(Packet::PubComp(pubcomp)) if pubcomp.pkid == EXCHANGE => assert_eq!(
            pubcomp.reason,
            PubCompReason::PacketIdentifierNotFound,
            "a's unfinished entry came back after b completed it\n{}",
            log()
        ),
        other => return Err(format!("expected PUBCOMP {EXCHANGE}, got {other:?}").into()),
    }
    // The subscription made in b holds in a.
    dispatch = RawMqtt5::connect(gateway.mqtt, "dispatch", true, 0)
        .await?
        .0;
    dispatch
        .publish_acked(1, UPDATES, "update-1", false)
        .await?;
    let mut again = Vec::new();
    let update = next_on(&mut device, UPDATES, false, &mut again).await?;
    assert_eq!(update, "update-1", "{}", log());
    device.subscribe(5, CONFIG, QoS::AtLeastOnce).await?;
    assert_eq!(
        next_on(&mut device, CONFIG, true, &mut again).await?,
        "config-2",
        "{}",
        log()
    );
    device.subscribe(6, FIRMWARE, QoS::AtLeastOnce).await?;
    assert_eq!(
        next_on(&mut device, FIRMWARE, true, &mut again).await?,
        "firmware-1"
    );
    // What it read in b of a's copies does not come again: its group resumes in a past the
    // records it consumed in b. (Only config-2 does: sent to it in b just before it left, never
    // acknowledged.)
    assert!(
        again.iter().all(|payload| payload == "config-2"),
        "{again:?}"
    );
    device.disconnect().await?;
    Ok(())
}

/// Is `value` a session record written when its client left? (Session records are JSON; one
/// written at a disconnect has `disconnected_at_ms`. The device is the only persistent session.)
fn left(value: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(value)
        .is_ok_and(|record| record["disconnected_at_ms"].is_i64())
}

/// Acknowledges and collects `count` distinct command payloads, none of `skip` expected.
async fn receive(
    device: &mut RawMqtt5,
    count: usize,
    skip: &HashSet<String>,
) -> Result<HashSet<String>, BoxError> {
    let mut got = HashSet::new();
    while got.len() < count {
        match device.read().await? {
            Some(Packet::Publish(publish)) => {
                if publish.pkid != 0 {
                    device.puback(publish.pkid).await?;
                }
                let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                if !skip.contains(&payload) {
                    got.insert(payload);
                }
            }
            other => return Err(format!("expected a command, got {other:?}").into()),
        }
    }
    Ok(got)
}

/// What a resumed device got: commands by payload with how often, the PUBCOMP's reason.
struct Resumed {
    commands: HashMap<String, usize>,
    pubcomp: Option<PubCompReason>,
}

/// Acknowledges commands until `count` distinct `command-*` payloads and the PUBCOMP came, then
/// a second more for late duplicates (other payloads are counted too, to be judged).
async fn receive_until_pubcomp(device: &mut RawMqtt5, count: usize) -> Result<Resumed, BoxError> {
    let mut resumed = Resumed {
        commands: HashMap::new(),
        pubcomp: None,
    };
    let deadline = tokio::time::Instant::now() + DEADLINE * 2;
    let commands = |resumed: &Resumed| {
        resumed
            .commands
            .keys()
            .filter(|c| c.starts_with("command-"))
            .count()
    };
    loop {
        let done = commands(&resumed) >= count && resumed.pubcomp.is_some();
        let wait = if done {
            Duration::from_secs(1)
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match device.read_within(wait).await? {
            None if done => return Ok(resumed),
            None => {
                return Err(format!(
                    "{} of {count} commands, PUBCOMP {:?}",
                    commands(&resumed),
                    resumed.pubcomp
                )
                .into());
            }
            Some(Some(Packet::Publish(publish))) => {
                if publish.pkid != 0 {
                    device.puback(publish.pkid).await?;
                }
                let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                *resumed.commands.entry(payload).or_default() += 1;
            }
            Some(Some(Packet::PubComp(pubcomp))) if pubcomp.pkid == EXCHANGE => {
                resumed.pubcomp = Some(pubcomp.reason);
            }
            Some(other) => return Err(format!("unexpected {other:?}").into()),
        }
    }
}

/// The next message on `topic` (retained, when `retained`); the other messages delivered meanwhile
/// are acknowledged and added to `others` (commands delivered again after the switch back).
async fn next_on(
    device: &mut RawMqtt5,
    topic: &str,
    retained: bool,
    others: &mut Vec<String>,
) -> Result<String, BoxError> {
    loop {
        match device.read().await? {
            Some(Packet::Publish(publish)) => {
                if publish.pkid != 0 {
                    device.puback(publish.pkid).await?;
                }
                let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                if publish.topic == topic.as_bytes() && publish.retain == retained {
                    return Ok(payload);
                }
                others.push(payload);
            }
            other => return Err(format!("expected a message on {topic}, got {other:?}").into()),
        }
    }
}

/// The Kafka topic the group readers read.
const ORDERS: &str = "orders";
const GRPC_GROUP: &str = "billing";
const AMQP_GROUP: &str = "warehouse";

/// A gRPC group and an AMQP group receiver read orders in a and leave; orders queue while they are
/// away; a is lost; each resumes through b where MirrorMaker 2's checkpoint put it (every queued
/// order, none of those read in a); orders written in b are read there; after the switch back to
/// a, each gets what was written in b after it left, and nothing it had read in b comes again:
/// the gateway brings its positions back (MirrorMaker 2 translates them only the other way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_amqp_groups_resume_at_translated_positions_across_a_lost_region() -> TestResult {
    let _one = ONE_AT_A_TIME.lock().await;
    let stage = Stage::start(&[ORDERS], &[GRPC_GROUP, AMQP_GROUP]).await?;
    stage.run(groups_journey).await
}

async fn groups_journey(stage: &Stage, admin: &mut AdminClient<Channel>) -> TestResult {
    let Stage {
        a,
        a_to_b,
        b_to_a,
        gateway,
        ..
    } = stage;
    admin
        .create_topic(pb::CreateTopicRequest {
            name: ORDERS.into(),
            partitions: 3,
            ..Default::default()
        })
        .await?;
    let producer = gateway.streams().await?;
    let produce = |prefix: &'static str, count: usize| {
        let mut streams = producer.clone();
        async move {
            let records = (0..count)
                .map(|i| record(None, &format!("{prefix}-{i}")))
                .collect();
            streams
                .produce(pb::ProduceRequest {
                    topic: ORDERS.into(),
                    records,
                    request_id: 1,
                })
                .await
                .map(drop)
        }
    };

    // In a: each group reads what there is, then leaves (committing).
    produce("seen", SEEN).await?;
    let seen = grpc_read(gateway, SEEN, &[]).await?;
    assert_eq!(seen.distinct("seen-"), SEEN);
    let seen = amqp_read(gateway, SEEN, &[]).await?;
    assert_eq!(seen.distinct("seen-"), SEEN);
    produce("order", QUEUED).await?;
    let queued: Vec<String> = (0..QUEUED).map(|i| format!("order-{i}")).collect();
    wait_until(
        "the orders and both groups' positions copied to b",
        DEADLINE,
        || {
            let copied: HashSet<String> = a_to_b.copied_values_of(ORDERS).into_iter().collect();
            let position = |group: &str| -> i64 {
                a_to_b
                    .checkpointed(group)
                    .iter()
                    .map(|(_, upstream)| upstream)
                    .sum()
            };
            queued.iter().all(|order| copied.contains(order))
                && position(GRPC_GROUP) >= SEEN as i64
                && position(AMQP_GROUP) >= SEEN as i64
        },
    )
    .await?;

    // a is lost: each group resumes through b at its translated position.
    a.freeze();
    wait_for_traffic_on(admin, "b", DEADLINE).await?;
    let grpc = grpc_read(gateway, QUEUED, &["order-"]).await?;
    let amqp = amqp_read(gateway, QUEUED, &["order-"]).await?;
    for (protocol, got) in [("gRPC", &grpc), ("AMQP", &amqp)] {
        assert_eq!(
            got.distinct("order-"),
            QUEUED,
            "{protocol} in b: {:?}",
            got.counts
        );
        assert_eq!(
            got.distinct("seen-"),
            0,
            "{protocol} in b read again what it read in a: the checkpoint was not used"
        );
        println!(
            "STATE {protocol} group in b: {QUEUED} queued orders, {} twice",
            got.duplicates()
        );
    }

    // Orders written in b; then the operator moves traffic back to a (thawed, with its data).
    produce("b-order", SEEN).await?;
    let grpc = grpc_read(gateway, SEEN, &["b-order-"]).await?;
    let amqp = amqp_read(gateway, SEEN, &["b-order-"]).await?;
    assert_eq!(grpc.distinct("b-order-"), SEEN);
    assert_eq!(amqp.distinct("b-order-"), SEEN);
    produce("late", SEEN).await?;
    a.thaw();
    let switched = admin
        .switch_region(pb::SwitchRegionRequest {
            region: "a".into(),
            planned: true,
            planned_timeout_ms: 90_000,
        })
        .await?
        .into_inner();
    let planned = switched.planned.ok_or("no planned switch outcome")?;
    assert!(planned.copied, "{planned:?}");
    let late: Vec<String> = (0..SEEN).map(|i| format!("late-{i}")).collect();
    let copied_back: HashSet<String> = b_to_a.copied_values_of(ORDERS).into_iter().collect();
    assert!(late.iter().all(|order| copied_back.contains(order)));

    // In a: what was written in b and not read there comes, and nothing read there comes again.
    let grpc = grpc_read(gateway, SEEN, &["late-"]).await?;
    let amqp = amqp_read(gateway, SEEN, &["late-"]).await?;
    for (protocol, got) in [("gRPC", &grpc), ("AMQP", &amqp)] {
        assert_eq!(
            got.distinct("late-"),
            SEEN,
            "{protocol} in a: {:?}",
            got.counts
        );
        assert_eq!(
            got.total(),
            SEEN,
            "{protocol} in a read again what it had read in b: {:?}",
            got.counts
        );
    }
    Ok(())
}

/// What a group reader got: values and how often.
#[derive(Debug, Default)]
struct Read {
    counts: HashMap<String, usize>,
}

impl Read {
    fn add(&mut self, value: String) {
        *self.counts.entry(value).or_default() += 1;
    }

    /// Distinct values starting with `prefix`.
    fn distinct(&self, prefix: &str) -> usize {
        self.counts.keys().filter(|v| v.starts_with(prefix)).count()
    }

    fn total(&self) -> usize {
        self.counts.values().sum()
    }

    fn duplicates(&self) -> usize {
        self.counts.values().map(|n| n - 1).sum()
    }

    /// Has it `count` distinct values starting with one of `prefixes` (any value, without)?
    fn has(&self, count: usize, prefixes: &[&str]) -> bool {
        if prefixes.is_empty() {
            return self.counts.len() >= count;
        }
        prefixes.iter().map(|p| self.distinct(p)).sum::<usize>() >= count
    }
}

/// How long a reader goes on after it has what it waited for, to count late duplicates.
const LINGER: Duration = Duration::from_secs(2);

/// Joins `GRPC_GROUP`, acknowledges everything until `count` distinct values with one of
/// `prefixes` came, and a little longer; then leaves.
async fn grpc_read(gateway: &Gateway, count: usize, prefixes: &[&str]) -> Result<Read, BoxError> {
    let mut streams = gateway.streams().await?;
    let mut reader = common::SubscribeStream::open(
        &mut streams,
        common::start_in_group(ORDERS, GRPC_GROUP, 500),
    )
    .await?;
    let mut read = Read::default();
    // Past the newest record acknowledged, per partition: what the group's commit must reach.
    let mut acked: HashMap<(String, i32), i64> = HashMap::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let wait = if read.has(count, prefixes) {
            LINGER
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match reader.next_records(wait).await? {
            Some(batch) => {
                reader.ack(&batch).await?;
                for record in &batch {
                    read.add(common::value_of(record));
                    let next = acked
                        .entry((record.topic.clone(), record.partition))
                        .or_default();
                    *next = (*next).max(record.offset + 1);
                }
            }
            None if read.has(count, prefixes) => break,
            None => return Err(format!("gRPC group read {:?}", read.counts).into()),
        }
    }
    // Leave once the group committed every acknowledgement (committed on an interval while the
    // member lives), so where it is does not depend on how the stream's end races its last acks.
    let mut admin = gateway.admin().await?;
    wait_for_commits(&mut admin, &acked).await?;
    drop(reader);
    Ok(read)
}

/// Waits until `GRPC_GROUP` has committed at least `acked` on every partition named.
async fn wait_for_commits(
    admin: &mut AdminClient<Channel>,
    acked: &HashMap<(String, i32), i64>,
) -> TestResult {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let description = admin
            .describe_group(pb::DescribeGroupRequest {
                group: GRPC_GROUP.into(),
            })
            .await?
            .into_inner();
        let committed: HashMap<(String, i32), i64> = description
            .partitions
            .into_iter()
            .map(|p| ((p.topic, p.partition), p.committed))
            .collect();
        let behind: Vec<_> = acked
            .iter()
            .filter(|(partition, next)| committed.get(*partition).is_none_or(|c| c < next))
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("the group did not commit {behind:?}: {committed:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Attaches a receiver in `AMQP_GROUP` and accepts everything until `count` distinct values with
/// one of `prefixes` came, and a little longer; then detaches.
async fn amqp_read(gateway: &Gateway, count: usize, prefixes: &[&str]) -> Result<Read, BoxError> {
    use fe2o3_amqp::{
        Connection, Receiver, Session,
        types::{messaging::Body, primitives::Value},
    };
    let url = format!("amqp://{}", gateway.amqp);
    let mut connection = Connection::open("warehouse", url.as_str()).await?;
    let mut session = Session::begin(&mut connection).await?;
    let source = format!("{ORDERS}/groups/{AMQP_GROUP}");
    let mut receiver = Receiver::attach(&mut session, "warehouse-link", source.as_str()).await?;
    let mut read = Read::default();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let wait = if read.has(count, prefixes) {
            LINGER
        } else {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        };
        match tokio::time::timeout(wait, receiver.recv::<Body<Value>>()).await {
            Ok(delivery) => {
                let delivery = delivery?;
                // A record written through gRPC is a data section.
                let value = match delivery.body() {
                    Body::Value(value) => match &value.0 {
                        Value::String(text) => text.clone(),
                        other => format!("{other:?}"),
                    },
                    Body::Data(sections) => sections
                        .iter()
                        .map(|section| String::from_utf8_lossy(&section.0).into_owned())
                        .collect(),
                    other => format!("{other:?}"),
                };
                receiver.accept(&delivery).await?;
                read.add(value);
            }
            Err(_) if read.has(count, prefixes) => break,
            Err(_) => return Err(format!("AMQP group read {:?}", read.counts).into()),
        }
    }
    receiver.close().await?;
    session.end().await?;
    connection.close().await?;
    Ok(read)
}
