//! Region failover end to end: two tansu processes are two regions, test replicators copy between
//! them in MirrorMaker 2's formats (`tests/common/replicator.rs`), and the real `courier` binary
//! routes over both (`log.kind = "regions"`). Active-passive with gRPC, and with MQTT and AMQP clients:
//! the primary broker process is killed mid-stream and started again. Active-active: a gateway per
//! region, one region killed. The tests measure what clients see (printed as `FAILOVER` lines) and
//! check nothing acknowledged is lost beyond the replication lag at the moment of the kill. The
//! router's own decisions (hold-down, a flapping region, an operator's pin) are tested in process on
//! paused time, in gateway/tests/regions.rs.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    BoxError, DEADLINE, Gateway, SubscribeStream, TestResult,
    clients::{Acked, OnDisconnect, spawn_amqp_sender, spawn_mqtt_publisher},
    regions::{
        regions_config, regions_status, snapshot, traffic_on, wait_for_traffic_on, wait_until,
    },
    replicator::Replicator,
    start_in_group,
};
use courier_grpc::proto::v1::{self as pb, admin_client::AdminClient};
use courier_testkit::Tansu;
use tonic::transport::Channel;

const TOPIC: &str = "orders";
const GROUP: &str = "billing";
/// The killed region's last acks reach the client within this of the kill; after it, no ack comes
/// until the other region takes the writes (see `assert_silent_after_kill`).
const STRAGGLERS: Duration = Duration::from_millis(500);

// What the gRPC producer got acknowledged: `clients::Acked`, keyed by courier-id.
/// What the consumer got: courier-id, topic, origin, when.
type Delivered = Arc<Mutex<Vec<(String, String, String, Instant)>>>;

/// Produces one record per request, one after another, recording each acknowledgement, until
/// `stop`. A failed request is retried as a new record (a real client would do the same).
fn spawn_producer(
    gateway: &Gateway,
    acked: Acked,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let url = gateway.url();
    tokio::spawn(async move {
        let mut client = pb::streams_client::StreamsClient::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let mut n = 0_u64;
        let mut failing = false;
        while !stop.is_cancelled() {
            n += 1;
            let sent = Instant::now();
            let request = pb::ProduceRequest {
                topic: TOPIC.into(),
                records: vec![common::record(
                    Some(&format!("k{}", n % 7)),
                    &format!("v{n}"),
                )],
                request_id: n,
            };
            match tokio::time::timeout(Duration::from_secs(60), client.produce(request)).await {
                Ok(Ok(response)) => {
                    failing = false;
                    let now = Instant::now();
                    let mut acked = acked.lock().unwrap_or_else(PoisonError::into_inner);
                    for ack in response.into_inner().acks {
                        acked.push((ack.courier_id, sent, now));
                    }
                }
                Ok(Err(status)) => {
                    if !failing {
                        eprintln!("produce v{n} failed ({status}); new records follow");
                    }
                    failing = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => return Err(format!("produce v{n} hung for 60 s")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })
}

/// Reads in `group` and acknowledges everything, resubscribing when the stream ends.
fn spawn_consumer(
    gateway: &Gateway,
    group: &'static str,
    delivered: Delivered,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let url = gateway.url();
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let Ok(mut client) = pb::streams_client::StreamsClient::connect(url.clone()).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Ok(mut stream) =
                SubscribeStream::open(&mut client, start_in_group(TOPIC, group, 100)).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    batch = stream.next_records(Duration::from_secs(1)) => match batch {
                        Ok(Some(records)) => {
                            let now = Instant::now();
                            {
                                let mut delivered = delivered.lock().unwrap_or_else(PoisonError::into_inner);
                                for record in &records {
                                    delivered.push((record.courier_id.clone(), record.topic.clone(), record.origin.clone(), now));
                                }
                            }
                            if stream.ack(&records).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => continue,
                        Err(status) => {
                            eprintln!("subscription ended ({status}); subscribing again");
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    })
}

/// A region killed at `at` (`at_ms` on the wall clock, as the gateway's Admin API dates switches).
#[derive(Debug, Clone, Copy)]
struct Kill {
    at: Instant,
    at_ms: i64,
}

impl Kill {
    fn now() -> Self {
        Self {
            at: Instant::now(),
            at_ms: courier_gateway::log::now_ms(),
        }
    }
}

/// How long after `kill` the gateway behind `admin` moved writes to `to` (waiting for it): acks
/// before then (and the stragglers within `STRAGGLERS` of the kill) were the killed region's, acks
/// after it the other region's. A killed region is DOWN at its first probe, so this is well under
/// a probe interval at times, and no fixed window tells the two apart.
async fn writes_moved(
    admin: &mut AdminClient<Channel>,
    to: &str,
    kill: Kill,
) -> Result<Duration, BoxError> {
    wait_for_traffic_on(admin, to, DEADLINE).await?;
    let status = regions_status(admin).await?;
    let switch = status
        .last_switch
        .ok_or("traffic moved but no switch is reported")?;
    let after = u64::try_from(switch.at_ms - kill.at_ms).unwrap_or(0);
    Ok(Duration::from_millis(after).max(STRAGGLERS))
}

/// What a failover did to one client's messages, judged by the test replicator's copies.
struct Judged {
    /// Acknowledged, outside the loss window, never delivered: the gateway lost them.
    missing: Vec<String>,
    /// Acknowledged by the killed region and not copied when it died, and never delivered.
    lost_in_window: usize,
    acked: usize,
    acked_before_kill: usize,
    copied_before_kill: usize,
    duplicates: usize,
}

impl std::fmt::Display for Judged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acknowledged {} in all, {} before the kill, of which the replicator had copied {}; lost \
             in the replication window: {}; duplicates delivered: {}",
            self.acked,
            self.acked_before_kill,
            self.copied_before_kill,
            self.lost_in_window,
            self.duplicates
        )
    }
}

/// Waits (up to a minute) until everything acknowledged outside the loss window was delivered, then
/// judges. `acked` holds (id, sent, acknowledged) and `delivered()` the ids delivered so far, in
/// whichever terms the client knows its messages (courier-id or payload) and `copied` matches.
///
/// The loss window is what the killed region acknowledged and the replicator had not copied when it
/// died (MirrorMaker 2's lag). An ack the killed region gave just before it died can reach the client
/// a moment after `killed_at` (the kill itself takes a few ms), while the other region acknowledges
/// nothing before writes moved to it (`moved`, from [`writes_moved`]): what arrived before then was
/// the killed region's.
async fn judge(
    acked: &[(String, Instant, Instant)],
    delivered: impl Fn() -> Vec<String>,
    copied: &HashSet<String>,
    killed_at: Instant,
    moved: Duration,
) -> Judged {
    let acked_before_kill: HashSet<&str> = acked
        .iter()
        .filter(|(_, _, at)| *at <= killed_at + moved)
        .map(|(id, _, _)| id.as_str())
        .collect();
    let in_loss_window: HashSet<&str> = acked_before_kill
        .iter()
        .copied()
        .filter(|id| !copied.contains(*id))
        .collect();
    let must_arrive: HashSet<&str> = acked
        .iter()
        .map(|(id, _, _)| id.as_str())
        .filter(|id| !in_loss_window.contains(id))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut arrived: Vec<String> = delivered();
    loop {
        let seen: HashSet<&str> = arrived.iter().map(String::as_str).collect();
        if must_arrive.iter().all(|id| seen.contains(id)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        arrived = delivered();
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &arrived {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    Judged {
        missing: must_arrive
            .iter()
            .filter(|id| !counts.contains_key(**id))
            .map(|id| (*id).to_owned())
            .collect(),
        lost_in_window: in_loss_window
            .iter()
            .filter(|id| !counts.contains_key(**id))
            .count(),
        acked: acked.len(),
        acked_before_kill: acked_before_kill.len(),
        copied_before_kill: acked_before_kill.len() - in_loss_window.len(),
        duplicates: counts.values().map(|n| n - 1).sum(),
    }
}

/// When `id` was acknowledged, in seconds after `killed_at` (negative: before).
fn seconds_after(acked: &[(String, Instant, Instant)], id: &str, killed_at: Instant) -> f64 {
    acked
        .iter()
        .find(|(acked_id, ..)| acked_id == id)
        .map(|(_, _, at)| {
            at.saturating_duration_since(killed_at).as_secs_f64()
                - killed_at.saturating_duration_since(*at).as_secs_f64()
        })
        .unwrap_or_default()
}

/// Checks the premise of `judge`: after the killed region's last acks (within `STRAGGLERS`),
/// nothing is acknowledged until writes moved to the other region (`moved` after the kill), so an
/// ack before then came from the killed region.
fn assert_silent_after_kill(
    what: &str,
    acked: &[(String, Instant, Instant)],
    killed_at: Instant,
    moved: Duration,
) {
    let early: Vec<Duration> = acked
        .iter()
        .map(|(_, _, at)| at.saturating_duration_since(killed_at))
        .filter(|after| *after > STRAGGLERS && *after < moved)
        .collect();
    assert!(
        early.is_empty(),
        "{what}: acks {early:?} after the kill, before the lost region could be DOWN"
    );
}

/// When `acked` first holds a message sent after `killed_at` and acknowledged at least `not_before`
/// after it: how long after the kill. With the time writes moved, the first write the other region
/// took (the killed one can still acknowledge what reached it an instant before it died).
async fn first_ack_after(
    what: &str,
    acked: &Acked,
    killed_at: Instant,
    not_before: Duration,
    gateway: &Gateway,
) -> Result<Duration, BoxError> {
    let mut first = None;
    wait_until(what, Duration::from_secs(60), || {
        first = snapshot(acked)
            .iter()
            .find(|(_, sent, at)| *sent > killed_at && *at >= killed_at + not_before)
            .map(|(_, _, at)| at.duration_since(killed_at));
        first.is_some()
    })
    .await
    .map_err(|e| format!("{e}; gateway log:\n{}", gateway.log()))?;
    Ok(first.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_passive_fails_over_and_back_with_nothing_copied_lost() -> TestResult {
    let mut a = Tansu::start()?;
    let b = Tansu::start()?;
    let a_to_b = Replicator::start("a", &a.bootstrap(), &b.bootstrap(), &[TOPIC], &[GROUP]);
    let b_to_a = Replicator::start("b", &b.bootstrap(), &a.bootstrap(), &[TOPIC], &[GROUP]);
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start_with_config(
        &dir.path().join("gateway"),
        &regions_config("a", "active-passive", &a, &b, "10s"),
        &[],
    )?;
    let mut admin = gateway.admin().await?;
    wait_for_traffic_on(&mut admin, "a", DEADLINE).await?;

    let acked: Acked = Arc::default();
    let delivered: Delivered = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_consumer = tokio_util::sync::CancellationToken::new();
    let producer = spawn_producer(&gateway, acked.clone(), stop.clone());
    let consumer = spawn_consumer(&gateway, GROUP, delivered.clone(), stop_consumer.clone());
    wait_until(
        "100 acknowledged and 50 delivered in region a",
        DEADLINE,
        || snapshot(&acked).len() >= 100 && snapshot(&delivered).len() >= 50,
    )
    .await?;

    // The primary region is lost.
    let kill = Kill::now();
    let killed_at = kill.at;
    a.kill();
    let moved = writes_moved(&mut admin, "b", kill).await?;
    let first_write = first_ack_after(
        "a write acknowledged in b",
        &acked,
        killed_at,
        moved,
        &gateway,
    )
    .await?;
    let first_delivery = {
        let mut first = None;
        wait_until("a delivery from region b", Duration::from_secs(60), || {
            first = snapshot(&delivered)
                .iter()
                .find(|(_, topic, origin, at)| {
                    *at > killed_at && (topic.starts_with("a.") || origin == "b")
                })
                .map(|(_, _, _, at)| at.duration_since(killed_at));
            first.is_some()
        })
        .await
        .map_err(|e| format!("{e}; gateway log:\n{}", gateway.log()))?;
        first.unwrap_or_default()
    };
    let status = regions_status(&mut admin).await?;
    eprintln!("after the kill: {status:?}");
    assert!(
        traffic_on(&mut admin, "b").await,
        "traffic is not on b: {status:?}"
    );

    // Writes go on in b for a while; then the primary comes back (empty: tansu keeps no disk).
    let acked_in_b_before = snapshot(&acked).len();
    wait_until("50 writes acknowledged in b", DEADLINE, || {
        snapshot(&acked).len() >= acked_in_b_before + 50
    })
    .await?;
    let copied_before_kill = a_to_b.copied_ids();
    // An outage of some length: the gateway has replaced its clients of the lost region by then.
    tokio::time::sleep_until((killed_at + Duration::from_secs(15)).into()).await;
    a.restart()?;
    let restarted_at = Instant::now();
    wait_for_traffic_on(&mut admin, "a", Duration::from_secs(90)).await?;
    let fail_back = restarted_at.elapsed();
    let acked_after_fail_back = snapshot(&acked).len();
    wait_until("50 writes acknowledged in a again", DEADLINE, || {
        snapshot(&acked).len() >= acked_after_fail_back + 50
    })
    .await?;
    stop.cancel();
    producer.await??;

    // Everything acknowledged arrives, except what was in the loss window (see `judge`).
    let acked = snapshot(&acked);
    assert_silent_after_kill("gRPC", &acked, killed_at, moved);
    let judged = judge(
        &acked,
        || {
            snapshot(&delivered)
                .into_iter()
                .map(|(id, ..)| id)
                .collect()
        },
        &copied_before_kill,
        killed_at,
        moved,
    )
    .await;
    stop_consumer.cancel();
    consumer.await??;
    eprintln!(
        "FAILOVER active-passive (gRPC): first write acknowledged in b {:.2} s after the kill; \
         first delivery from b {:.2} s after the kill; fail-back {:.2} s after the restart \
         (hold-down 10 s); {judged}",
        first_write.as_secs_f64(),
        first_delivery.as_secs_f64(),
        fail_back.as_secs_f64(),
    );
    let copied_back = b_to_a.copied_ids();
    let copied_over = a_to_b.copied_ids();
    let explain: Vec<String> = judged
        .missing
        .iter()
        .take(10)
        .map(|id| {
            let acked_at = seconds_after(&acked, id, killed_at);
            format!(
                "{id}: acked {acked_at:.2} s after the kill, copied a->b {}, b->a {}",
                copied_over.contains(id),
                copied_back.contains(id)
            )
        })
        .collect();
    assert!(
        judged.missing.is_empty(),
        "{} acknowledged records outside the loss window never arrived: {explain:#?}; gateway log:\n{}",
        judged.missing.len(),
        gateway.log()
    );
    let status = regions_status(&mut admin).await?;
    let last = status.last_switch.as_ref().ok_or("no switch recorded")?;
    assert_eq!((last.from.as_str(), last.to.as_str()), ("b", "a"));
    assert!(
        status.switches >= 4,
        "writes and reads each moved twice: {status:?}"
    );
    Ok(())
}

const AMQP_TOPIC: &str = "dispatches";
const AMQP_GROUP: &str = "couriers";
/// MQTT devices publish under `devices/`; the default route puts them in `mqtt.messages`.
const MQTT_KAFKA_TOPIC: &str = "mqtt.messages";
const MQTT_SHARE: &str = "$share/fleet/devices/#";
/// The consumer group of `MQTT_SHARE` (`mapping::share_group`).
const MQTT_GROUP: &str = "mqtt.share.fleet.devices/#";

/// What a receiving client got: payload, when.
type Received = Arc<Mutex<Vec<(String, Instant)>>>;

/// An MQTT 5 subscriber to `filter` at QoS 1, acknowledging every message; it subscribes again
/// whenever it (re)connects, and sets `subscribed` at its first SUBACK (a new subscription reads
/// from then on: what a publisher wrote before is not its to receive).
fn spawn_mqtt_subscriber(
    gateway: &Gateway,
    client_id: &str,
    filter: &'static str,
    received: Received,
    subscribed: Arc<AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    use rumqttc::v5::{
        AsyncClient, Event, MqttOptions,
        mqttbytes::{QoS, v5::Packet},
    };
    let mut options = MqttOptions::new(client_id, "127.0.0.1", gateway.mqtt.port());
    options.set_keep_alive(std::time::Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 100);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => client
                    .try_subscribe(filter, QoS::AtLeastOnce)
                    .map_err(|e| e.to_string())?,
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed.store(true, Ordering::Release),
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                    received
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((payload, Instant::now()));
                }
                Ok(_) => {}
                Err(error) => {
                    eprintln!("MQTT subscriber: {error}; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

/// An AMQP receiver in group `AMQP_GROUP`, accepting every message; it attaches again on a new
/// connection when its link ends.
fn spawn_amqp_receiver(
    gateway: &Gateway,
    received: Received,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    use fe2o3_amqp::{
        Connection, Receiver, Session,
        types::{messaging::Body, primitives::Value},
    };
    let url = format!("amqp://{}", gateway.amqp);
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let attached = async {
                let mut connection = Connection::open("couriers", url.as_str()).await?;
                let mut session = Session::begin(&mut connection).await?;
                let source = format!("{AMQP_TOPIC}/groups/{AMQP_GROUP}");
                let receiver =
                    Receiver::attach(&mut session, "couriers-link", source.as_str()).await?;
                Ok::<_, BoxError>((connection, session, receiver))
            };
            let Ok((mut connection, _session, mut receiver)) = attached.await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            loop {
                let delivery = tokio::select! {
                    () = stop.cancelled() => break,
                    delivery = receiver.recv::<Body<Value>>() => delivery,
                };
                let Ok(delivery) = delivery else {
                    eprintln!("AMQP receiver: link ended; attaching again");
                    break;
                };
                let payload = match delivery.body() {
                    Body::Value(value) => match &value.0 {
                        Value::String(text) => text.clone(),
                        other => format!("{other:?}"),
                    },
                    other => format!("{other:?}"),
                };
                received
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((payload, Instant::now()));
                if receiver.accept(&delivery).await.is_err() {
                    break;
                }
            }
            let _ = receiver.close().await;
            let _ = connection.close().await;
        }
        Ok(())
    })
}

/// When `received` first holds a message sent after `killed_at`: how long after the kill.
async fn first_receipt_after(
    what: &str,
    received: &Received,
    acked: &Acked,
    killed_at: Instant,
) -> Result<Duration, BoxError> {
    let mut first = None;
    wait_until(what, Duration::from_secs(60), || {
        let written_after: HashSet<String> = snapshot(acked)
            .into_iter()
            .filter(|(_, sent, _)| *sent > killed_at)
            .map(|(payload, ..)| payload)
            .collect();
        first = snapshot(received)
            .iter()
            .find(|(payload, at)| *at > killed_at && written_after.contains(payload))
            .map(|(_, at)| at.duration_since(killed_at));
        first.is_some()
    })
    .await?;
    Ok(first.unwrap_or_default())
}

/// MQTT and AMQP clients through the same failover and fail-back as the gRPC test: an MQTT publisher
/// (QoS 1) and a shared-subscription subscriber, an AMQP sender (unsettled) and a group receiver,
/// none of them told anything about regions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_amqp_clients_fail_over_and_back() -> TestResult {
    let mut a = Tansu::start()?;
    let b = Tansu::start()?;
    let topics = [MQTT_KAFKA_TOPIC, AMQP_TOPIC];
    let groups = [MQTT_GROUP, AMQP_GROUP];
    let a_to_b = Replicator::start("a", &a.bootstrap(), &b.bootstrap(), &topics, &groups);
    let _b_to_a = Replicator::start("b", &b.bootstrap(), &a.bootstrap(), &topics, &groups);
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start_with_config(
        &dir.path().join("gateway"),
        &regions_config("a", "active-passive", &a, &b, "10s"),
        &[],
    )?;
    let mut admin = gateway.admin().await?;
    wait_for_traffic_on(&mut admin, "a", DEADLINE).await?;

    let (mqtt_acked, amqp_acked) = (Acked::default(), Acked::default());
    let (mqtt_received, amqp_received) = (Received::default(), Received::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_receivers = tokio_util::sync::CancellationToken::new();
    let subscribed = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let mqtt_subscriber = spawn_mqtt_subscriber(
        &gateway,
        "fleet-subscriber",
        MQTT_SHARE,
        mqtt_received.clone(),
        subscribed[0].clone(),
        stop_receivers.clone(),
    );
    // A clean-session subscriber without a group: the gateway's shared reader of the topic serves it.
    let dashboard_received = Received::default();
    let dashboard = spawn_mqtt_subscriber(
        &gateway,
        "fleet-dashboard",
        "devices/#",
        dashboard_received.clone(),
        subscribed[1].clone(),
        stop_receivers.clone(),
    );
    // Every message the publisher writes is to reach both subscribers: they subscribe first.
    wait_until("both MQTT subscribers subscribed", DEADLINE, || {
        subscribed
            .iter()
            .all(|subscribed| subscribed.load(Ordering::Acquire))
    })
    .await
    .map_err(|e| format!("{e}; gateway log:\n{}", gateway.log()))?;
    let amqp_receiver =
        spawn_amqp_receiver(&gateway, amqp_received.clone(), stop_receivers.clone());
    let mqtt_publisher = spawn_mqtt_publisher(
        gateway.mqtt,
        "devices/truck-7",
        "m",
        mqtt_acked.clone(),
        OnDisconnect::Reconnect,
        stop.clone(),
    );
    let amqp_sender = spawn_amqp_sender(
        gateway.amqp,
        AMQP_TOPIC,
        "a",
        amqp_acked.clone(),
        OnDisconnect::Reconnect,
        stop.clone(),
    );
    wait_until(
        "50 acknowledged and 20 received on each protocol in region a",
        DEADLINE,
        || {
            snapshot(&mqtt_acked).len() >= 50
                && snapshot(&amqp_acked).len() >= 50
                && snapshot(&mqtt_received).len() >= 20
                && snapshot(&amqp_received).len() >= 20
        },
    )
    .await
    .map_err(|e| format!("{e}; gateway log:\n{}", gateway.log()))?;
    // The replicator copies both topics and checkpoints both groups (once a second) before the kill.
    wait_until("the replicator copying 20 of each", DEADLINE, || {
        let copied = a_to_b.copied_values();
        let count = |prefix: &str| copied.iter().filter(|v| v.starts_with(prefix)).count();
        count("m") >= 20 && count("a") >= 20
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let kill = Kill::now();
    let killed_at = kill.at;
    a.kill();
    let moved = writes_moved(&mut admin, "b", kill).await?;
    let mqtt_write = first_ack_after(
        "an MQTT publish in b",
        &mqtt_acked,
        killed_at,
        moved,
        &gateway,
    )
    .await?;
    let amqp_write =
        first_ack_after("an AMQP send in b", &amqp_acked, killed_at, moved, &gateway).await?;
    let mqtt_delivery = first_receipt_after(
        "an MQTT delivery from b",
        &mqtt_received,
        &mqtt_acked,
        killed_at,
    )
    .await
    .map_err(|e| format!("{e}; gateway log:\n{}", gateway.log()))?;
    let amqp_delivery = first_receipt_after(
        "an AMQP delivery from b",
        &amqp_received,
        &amqp_acked,
        killed_at,
    )
    .await
    .map_err(|e| format!("{e}; gateway log:\n{}", gateway.log()))?;
    let copied_before_kill = a_to_b.copied_values();

    tokio::time::sleep_until((killed_at + Duration::from_secs(15)).into()).await;
    let restarting_at = Instant::now();
    a.restart()?;
    wait_for_traffic_on(&mut admin, "a", Duration::from_secs(90)).await?;
    let (mqtt_before, amqp_before) = (snapshot(&mqtt_acked).len(), snapshot(&amqp_acked).len());
    wait_until("20 more of each acknowledged in a again", DEADLINE, || {
        snapshot(&mqtt_acked).len() >= mqtt_before + 20
            && snapshot(&amqp_acked).len() >= amqp_before + 20
    })
    .await?;
    stop.cancel();
    mqtt_publisher.await??;
    amqp_sender.await??;

    for (protocol, acked, received, write, delivery) in [
        (
            "MQTT",
            &mqtt_acked,
            &mqtt_received,
            mqtt_write,
            mqtt_delivery,
        ),
        (
            "AMQP",
            &amqp_acked,
            &amqp_received,
            amqp_write,
            amqp_delivery,
        ),
    ] {
        let acked = &snapshot(acked);
        assert_silent_after_kill(protocol, acked, killed_at, moved);
        let judged = judge(
            acked,
            || {
                snapshot(received)
                    .into_iter()
                    .map(|(payload, _)| payload)
                    .collect()
            },
            &copied_before_kill,
            killed_at,
            moved,
        )
        .await;
        eprintln!(
            "FAILOVER active-passive ({protocol}): first write acknowledged in b {:.2} s after the \
             kill; first delivery from b {:.2} s after the kill; {judged}",
            write.as_secs_f64(),
            delivery.as_secs_f64(),
        );
        assert!(
            judged.missing.is_empty(),
            "{protocol}: {} acknowledged messages outside the loss window never arrived, e.g. \
             {:?}; gateway log:\n{}",
            judged.missing.len(),
            judged
                .missing
                .iter()
                .take(10)
                .map(|id| format!(
                    "{id}: acked {:.2} s after the kill, copied a->b {}",
                    seconds_after(acked, id, killed_at),
                    copied_before_kill.contains(id)
                ))
                .collect::<Vec<_>>(),
            gateway.log()
        );
    }
    // The clean-session subscriber gets what was written in b while a was down: the shared reader
    // followed the switch.
    let written_in_b: Vec<String> = snapshot(&mqtt_acked)
        .into_iter()
        .filter(|(_, _, acked)| *acked >= killed_at + mqtt_write && *acked < restarting_at)
        .map(|(payload, ..)| payload)
        .collect();
    assert!(!written_in_b.is_empty(), "nothing was written in b");
    wait_until(
        "the clean-session subscriber getting every message written in b",
        DEADLINE,
        || {
            let got: HashSet<String> = snapshot(&dashboard_received)
                .into_iter()
                .map(|(payload, _)| payload)
                .collect();
            written_in_b.iter().all(|payload| got.contains(payload))
        },
    )
    .await
    .map_err(|e| format!("{e}; gateway log:\n{}", gateway.log()))?;
    stop_receivers.cancel();
    mqtt_subscriber.await??;
    dashboard.await??;
    amqp_receiver.await??;
    let status = regions_status(&mut admin).await?;
    let last = status.last_switch.as_ref().ok_or("no switch recorded")?;
    assert_eq!((last.from.as_str(), last.to.as_str()), ("b", "a"));
    Ok(())
}

/// Active-active: a gateway in each region writes locally and its group reads `T` and the other
/// region's mirror, so each sees both regions' records. Region b is lost: the gateway in b writes and
/// reads in a, the gateway in a carries on untouched, and nothing acknowledged outside b's
/// replication window is lost to either group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_active_writes_locally_and_survives_a_region() -> TestResult {
    const GROUP_A: &str = "billing-in-a";
    const GROUP_B: &str = "billing-in-b";
    let a = Tansu::start()?;
    let mut b = Tansu::start()?;
    let groups = [GROUP_A, GROUP_B];
    let _a_to_b = Replicator::start("a", &a.bootstrap(), &b.bootstrap(), &[TOPIC], &groups);
    let b_to_a = Replicator::start("b", &b.bootstrap(), &a.bootstrap(), &[TOPIC], &groups);
    let dir = tempfile::tempdir()?;
    let in_a = Gateway::start_with_config(
        &dir.path().join("gateway-a"),
        &regions_config("a", "active-active", &a, &b, "10s"),
        &[],
    )?;
    let in_b = Gateway::start_with_config(
        &dir.path().join("gateway-b"),
        &regions_config("b", "active-active", &a, &b, "10s"),
        &[],
    )?;
    wait_for_traffic_on(&mut in_a.admin().await?, "a", DEADLINE).await?;
    wait_for_traffic_on(&mut in_b.admin().await?, "b", DEADLINE).await?;

    let (acked_a, acked_b) = (Acked::default(), Acked::default());
    let (delivered_a, delivered_b) = (Delivered::default(), Delivered::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_consumers = tokio_util::sync::CancellationToken::new();
    let producers = [
        spawn_producer(&in_a, acked_a.clone(), stop.clone()),
        spawn_producer(&in_b, acked_b.clone(), stop.clone()),
    ];
    let consumers = [
        spawn_consumer(&in_a, GROUP_A, delivered_a.clone(), stop_consumers.clone()),
        spawn_consumer(&in_b, GROUP_B, delivered_b.clone(), stop_consumers.clone()),
    ];
    // Each group sees its own region's records and the other's, through the mirror.
    let both_origins = |delivered: &Delivered| {
        let seen = snapshot(delivered);
        let from = |region: &str| seen.iter().any(|(_, _, origin, _)| origin == region);
        from("a") && from("b")
    };
    wait_until(
        "each group reading records from both regions",
        DEADLINE,
        || both_origins(&delivered_a) && both_origins(&delivered_b),
    )
    .await?;
    wait_until("the replicator copying from b", DEADLINE, || {
        b_to_a.copied_ids().len() >= 20
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let kill = Kill::now();
    let killed_at = kill.at;
    b.kill();
    // The gateway in a writes on as before; the one in b writes in a once b is DOWN.
    let local_write = first_ack_after(
        "a local write in a",
        &acked_a,
        killed_at,
        Duration::ZERO,
        &in_a,
    )
    .await?;
    let mut admin_b = in_b.admin().await?;
    let moved = writes_moved(&mut admin_b, "a", kill).await?;
    let moved_write = first_ack_after(
        "a write from b's gateway in a",
        &acked_b,
        killed_at,
        moved,
        &in_b,
    )
    .await?;
    let copied_before_kill = b_to_a.copied_ids();
    let (a_before, b_before) = (snapshot(&acked_a).len(), snapshot(&acked_b).len());
    wait_until("50 more writes through each gateway", DEADLINE, || {
        snapshot(&acked_a).len() >= a_before + 50 && snapshot(&acked_b).len() >= b_before + 50
    })
    .await?;
    stop.cancel();
    for producer in producers {
        producer.await??;
    }

    assert_silent_after_kill(
        "gRPC through b's gateway",
        &snapshot(&acked_b),
        killed_at,
        moved,
    );
    // What the gateway in a wrote lives in a, which survived: it all counts as copied.
    let written_in_a: HashSet<String> = snapshot(&acked_a).into_iter().map(|(id, ..)| id).collect();
    for (group, delivered) in [(GROUP_A, &delivered_a), (GROUP_B, &delivered_b)] {
        for (writer, acked, copied) in [
            ("a", &acked_a, &written_in_a),
            ("b", &acked_b, &copied_before_kill),
        ] {
            let judged = judge(
                &snapshot(acked),
                || snapshot(delivered).into_iter().map(|(id, ..)| id).collect(),
                copied,
                killed_at,
                moved,
            )
            .await;
            eprintln!(
                "FAILOVER active-active: group {group}, writes through the gateway in {writer} \
                 (in a or copied count as copied): {judged}"
            );
            assert!(
                judged.missing.is_empty(),
                "group {group} never got {} records written through {writer}'s gateway, e.g. {:?}",
                judged.missing.len(),
                judged.missing.iter().take(5).collect::<Vec<_>>()
            );
        }
    }
    stop_consumers.cancel();
    for consumer in consumers {
        consumer.await??;
    }
    let status_a = regions_status(&mut in_a.admin().await?).await?;
    assert_eq!(
        status_a.switches, 0,
        "the gateway in a never moved traffic: {status_a:?}"
    );
    eprintln!(
        "FAILOVER active-active: the gateway in a wrote on ({:.2} s after the kill, no switch); \
         the gateway in b wrote in a {:.2} s after the kill",
        local_write.as_secs_f64(),
        moved_write.as_secs_f64()
    );
    Ok(())
}

/// The lag the gateway reports for copies of `from` in `to`, from `/metrics`, in seconds.
fn reported_lag(gateway: &Gateway, from: &str, to: &str) -> Result<Option<f64>, BoxError> {
    let (_, body) = common::scrape::get(gateway.http, "/metrics")?;
    Ok(common::scrape::series(
        &body,
        &format!("courier_region_replication_lag_seconds{{from=\"{from}\",to=\"{to}\"}}"),
    ))
}

/// Region `region`'s copies of `from`, as `ListRegions` shows them.
async fn replication_of(
    admin: &mut AdminClient<Channel>,
    region: &str,
    from: &str,
) -> Result<pb::ReplicationLag, BoxError> {
    regions_status(admin)
        .await?
        .regions
        .into_iter()
        .find(|r| r.name == region)
        .and_then(|r| r.replication.into_iter().find(|lag| lag.from == from))
        .ok_or_else(|| format!("no replication of {from} in {region}").into())
}

/// A consumer group of region `a` read by a native Kafka client of that region (the group a
/// gateway's clients make is the same to MirrorMaker 2), with a producer feeding its topic.
struct NativeGroup {
    producer: rdkafka::producer::FutureProducer,
    consumer: rdkafka::consumer::BaseConsumer,
    committed: i64,
}

impl NativeGroup {
    fn new(bootstrap: &str) -> Result<Self, BoxError> {
        use rdkafka::{ClientConfig, consumer::Consumer};
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            // tansu 0.6.0 reads a batch from its first record only (see gateway/tests/kafka.rs).
            .set("batch.num.messages", "1")
            .create()?;
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[TOPIC])?;
        Ok(Self {
            producer,
            consumer,
            committed: 0,
        })
    }

    /// Writes `count` records, reads them as the group and commits past them; returns the offset
    /// committed.
    async fn consume_more(&mut self, count: usize) -> Result<i64, BoxError> {
        use rdkafka::{
            Message, TopicPartitionList,
            consumer::{CommitMode, Consumer},
            producer::FutureRecord,
        };
        for i in 0..count {
            let value = format!("native-{}-{i}", self.committed);
            self.producer
                .send(
                    FutureRecord::<(), str>::to(TOPIC)
                        .partition(0)
                        .payload(&value),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(error, _)| error)?;
        }
        let wanted = self.committed + count as i64;
        let deadline = Instant::now() + DEADLINE;
        let mut next = self.committed;
        while next < wanted {
            if Instant::now() > deadline {
                return Err(format!("read to {next} of {wanted} as {GROUP}").into());
            }
            let polled =
                tokio::task::block_in_place(|| self.consumer.poll(Duration::from_millis(200)));
            if let Some(message) = polled {
                next = next.max(message?.offset() + 1);
            }
        }
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(TOPIC, 0, rdkafka::Offset::Offset(wanted))?;
        tokio::task::block_in_place(|| self.consumer.commit(&offsets, CommitMode::Sync))?;
        self.committed = wanted;
        Ok(wanted)
    }
}

/// Region `b`'s checkpoint coverage of `a`'s groups, as `ListRegions` shows it.
async fn checkpoints_of(
    admin: &mut AdminClient<Channel>,
) -> Result<Option<pb::CheckpointCoverage>, BoxError> {
    Ok(replication_of(admin, "b", "a").await?.checkpoints)
}

/// What the gateway exports for `GROUP`'s checkpoints of `a` in `b`: records behind, age.
fn reported_checkpoint(gateway: &Gateway) -> (Option<f64>, Option<f64>) {
    let Ok((_, body)) = common::scrape::get(gateway.http, "/metrics") else {
        return (None, None);
    };
    let series = |name: &str| {
        common::scrape::series(
            &body,
            &format!("{name}{{from=\"a\",to=\"b\",group=\"{GROUP}\"}}"),
        )
    };
    (
        series("courier_region_checkpoint_behind_records"),
        series("courier_region_checkpoint_age_seconds"),
    )
}

/// The replication lag follows the replicator: the canary is mirrored like any topic, the lag the
/// gateway reports matches the age of the last canary the replicator says it copied, it grows while
/// the replicator is paused (the standby turns stale: `ListRegions` says so and `/readyz`, still
/// ready, names it) and falls back once it resumes. The duplicates window follows it too: the
/// records a group of `a` committed past its newest checkpoint in `b`, against the replicator's own
/// record of the checkpoints it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_lag_follows_a_paused_and_resumed_replicator() -> TestResult {
    const CANARY: &str = "courier.canary";
    let a = Tansu::start()?;
    let b = Tansu::start()?;
    let dir = tempfile::tempdir()?;
    let config = regions_config("a", "active-passive", &a, &b, "10s").replacen(
        "[log]\n",
        "[log]\nreplication_stale_after = \"5s\"\ncheckpoint_interval = \"1s\"\n",
        1,
    );
    let gateway = Gateway::start_with_config(
        &dir.path().join("gateway"),
        &config,
        &[("COURIER_HTTP__LAG_INTERVAL", "1s")],
    )?;
    let mut admin = gateway.admin().await?;
    wait_for_traffic_on(&mut admin, "a", DEADLINE).await?;
    admin
        .create_topic(pb::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 1,
            ..Default::default()
        })
        .await?;
    let a_to_b = Replicator::start(
        "a",
        &a.bootstrap(),
        &b.bootstrap(),
        &[CANARY, TOPIC],
        &[GROUP],
    );
    let mut group = NativeGroup::new(&a.bootstrap())?;
    let lag_now = || reported_lag(&gateway, "a", "b").ok().flatten();
    let readyz = || common::scrape::get(gateway.http, "/readyz").map(|(_, body)| body);
    // The truth: what the group committed past the checkpoint the replicator last wrote.
    let uncheckpointed = |committed: i64| -> i64 {
        let checkpointed = a_to_b
            .checkpointed(GROUP)
            .into_iter()
            .filter(|((_, topic, _), _)| topic == TOPIC)
            .map(|(_, upstream)| upstream)
            .max()
            .unwrap_or(0);
        committed - checkpointed
    };

    // A group that read 50 records in a, checkpointed: nothing would be read again.
    let committed = group.consume_more(50).await?;
    wait_until("the group's position checkpointed", DEADLINE, || {
        uncheckpointed(committed) == 0
    })
    .await?;
    wait_until("a checkpoint coverage of 0 exported", DEADLINE, || {
        reported_checkpoint(&gateway) == (Some(0.0), Some(0.0))
    })
    .await?;

    // Copied as it is written: a lag of a probe interval or so.
    wait_until("a's canary copied into b and measured", DEADLINE, || {
        lag_now().is_some_and(|lag| lag < 5.0)
    })
    .await?;
    let copies = replication_of(&mut admin, "b", "a").await?;
    assert!(!copies.stale && copies.lag_ms.is_some(), "{copies:?}");
    let body = readyz()?;
    assert!(!body.contains("stale standby"), "{body}");

    // What the gateway reports against the replicator's own record: the age of the last canary it
    // copied. The gateway measured up to a probe (1 s) and its read before the scrape.
    let against_the_replicator = || -> Result<(f64, f64), BoxError> {
        let last_copied: i64 = a_to_b
            .last_copied_value(CANARY)
            .ok_or("the replicator copied no canary")?
            .parse()?;
        let reported = lag_now().ok_or("no lag reported")?;
        let truth = (courier_gateway::log::now_ms() - last_copied) as f64 / 1e3;
        assert!(
            // Above: the replicator may have copied a newer canary since the gateway's reading.
            reported <= truth + 1.5 && reported >= truth - 3.0,
            "reported {reported:.1} s, the last copy is {truth:.1} s old"
        );
        Ok((reported, truth))
    };

    // Slowed: the replicator keeps 4 s behind, and so does the lag.
    a_to_b.set_delay(Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (slowed, slowed_truth) = against_the_replicator()?;
    assert!(slowed >= 3.0, "reported {slowed:.1} s 4 s behind");
    a_to_b.set_delay(Duration::ZERO);

    // Paused: nothing more is copied, and the lag is the age of what the replicator copied last.
    // The group reads on in a: what it reads now is past its checkpoint, and counted.
    // Waits out the replicator's round under way (seconds at most), so off the runtime's turn.
    tokio::task::block_in_place(|| a_to_b.pause());
    let committed = group.consume_more(30).await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let past_checkpoint = uncheckpointed(committed);
    assert_eq!(
        past_checkpoint, 30,
        "the replicator checkpointed while paused"
    );
    wait_until("30 records past the checkpoint exported", DEADLINE, || {
        reported_checkpoint(&gateway).0 == Some(30.0)
    })
    .await?;
    let (_, checkpoint_age) = reported_checkpoint(&gateway);
    assert!(
        checkpoint_age.is_some_and(|age| age >= 5.0),
        "checkpoint age {checkpoint_age:?} after 8 s paused"
    );
    let coverage = checkpoints_of(&mut admin)
        .await?
        .ok_or("no checkpoint coverage in ListRegions")?;
    assert_eq!(coverage.records_behind, 30, "{coverage:?}");
    assert_eq!(
        coverage.furthest.first().map(|g| g.group.as_str()),
        Some(GROUP)
    );
    let (reported, truth) = against_the_replicator()?;
    assert!(reported >= 5.0, "reported {reported:.1} s after 8 s paused");
    let copies = replication_of(&mut admin, "b", "a").await?;
    assert!(copies.stale, "{copies:?}");
    let body = readyz()?;
    assert!(
        body.starts_with("ready\n") && body.contains("stale standby: b is"),
        "{body}"
    );

    // Resumed: the backlog is copied and the lag falls back.
    a_to_b.resume();
    wait_until("the lag back under 3 s", DEADLINE, || {
        lag_now().is_some_and(|lag| lag < 3.0)
    })
    .await?;
    let copies = replication_of(&mut admin, "b", "a").await?;
    assert!(!copies.stale, "{copies:?}");
    let body = readyz()?;
    assert!(!body.contains("stale standby"), "{body}");
    wait_until("the group's checkpoint covering it again", DEADLINE, || {
        reported_checkpoint(&gateway) == (Some(0.0), Some(0.0))
    })
    .await?;
    assert_eq!(uncheckpointed(committed), 0);
    println!(
        "CHECKPOINTS paused 8 s: {past_checkpoint} records past the checkpoint (reported the \
         same), checkpoint {:.1} s old",
        checkpoint_age.unwrap_or_default()
    );
    println!(
        "REPLICATION 4 s behind: reported {slowed:.1} s, last copy {slowed_truth:.1} s old; \
         paused 8 s: reported {reported:.1} s, last copy {truth:.1} s old"
    );
    Ok(())
}

/// A planned switch under live gRPC, MQTT and AMQP traffic: every record a client got acknowledged
/// in `a` was in `b` (copied by the replicator) when the switch answered, so the switch loses
/// nothing; clients waited (no errors), the pause is measured, duplicates counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switch_under_live_traffic_loses_nothing() -> TestResult {
    let a = Tansu::start()?;
    let b = Tansu::start()?;
    // Every topic the clients write, the gateway's own MQTT tables among them (MirrorMaker 2
    // mirrors them all).
    let topics = [
        TOPIC,
        MQTT_KAFKA_TOPIC,
        AMQP_TOPIC,
        "mqtt.sessions",
        "mqtt.retained",
        "mqtt.qos2",
        "courier.canary",
    ];
    let a_to_b = Replicator::start("a", &a.bootstrap(), &b.bootstrap(), &topics, &[GROUP]);
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start_with_config(
        &dir.path().join("gateway"),
        &regions_config("a", "active-passive", &a, &b, "10s"),
        &[],
    )?;
    let mut admin = gateway.admin().await?;
    wait_for_traffic_on(&mut admin, "a", DEADLINE).await?;

    let (grpc_acked, mqtt_acked, amqp_acked) =
        (Acked::default(), Acked::default(), Acked::default());
    let delivered: Delivered = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_consumer = tokio_util::sync::CancellationToken::new();
    let producer = spawn_producer(&gateway, grpc_acked.clone(), stop.clone());
    let consumer = spawn_consumer(&gateway, GROUP, delivered.clone(), stop_consumer.clone());
    let mqtt_publisher = spawn_mqtt_publisher(
        gateway.mqtt,
        "devices/truck-9",
        "p",
        mqtt_acked.clone(),
        OnDisconnect::Stop,
        stop.clone(),
    );
    let amqp_sender = spawn_amqp_sender(
        gateway.amqp,
        AMQP_TOPIC,
        "q",
        amqp_acked.clone(),
        OnDisconnect::Stop,
        stop.clone(),
    );
    wait_until("traffic on every protocol in a", DEADLINE, || {
        snapshot(&grpc_acked).len() >= 100
            && snapshot(&mqtt_acked).len() >= 100
            && snapshot(&amqp_acked).len() >= 100
            && snapshot(&delivered).len() >= 50
            && reported_lag(&gateway, "a", "b").is_ok_and(|lag| lag.is_some())
    })
    .await?;

    // The loss window a crash now would have, and what the planned switch waits out instead.
    let lag_before = reported_lag(&gateway, "a", "b")?.ok_or("no replication lag")?;
    let asked = Instant::now();
    let status = admin
        .switch_region(pb::SwitchRegionRequest {
            region: "b".into(),
            planned: true,
            planned_timeout_ms: 50_000,
        })
        .await
        .map_err(|status| format!("{status}; gateway log:\n{}", gateway.log()))?
        .into_inner();
    let answered_at = Instant::now();
    let answered = answered_at - asked;
    let planned = status.planned.clone().ok_or("no planned switch outcome")?;
    assert!(planned.copied, "{planned:?}\n{}", gateway.log());
    assert!(traffic_on(&mut admin, "b").await, "{status:?}");

    // Traffic goes on in b; then everything stops and the replicator copies what a holds.
    let counts = |acked: &[&Acked]| acked.iter().map(|a| snapshot(a).len()).collect::<Vec<_>>();
    let at_switch = counts(&[&grpc_acked, &mqtt_acked, &amqp_acked]);
    wait_until("traffic acknowledged in b", DEADLINE, || {
        counts(&[&grpc_acked, &mqtt_acked, &amqp_acked])
            .iter()
            .zip(&at_switch)
            .all(|(now, then)| now >= &(then + 20))
    })
    .await?;
    stop.cancel();
    producer.await??;
    let mqtt_stopped = mqtt_publisher.await??;
    let amqp_stopped = amqp_sender.await??;
    assert_eq!(
        (mqtt_stopped.as_str(), amqp_stopped.as_str()),
        ("cancelled", "cancelled"),
        "no client saw an error across the switch"
    );
    let mut settled = (0, 0);
    wait_until("the replicator copied what a holds", DEADLINE, || {
        let now = (a_to_b.copied_ids().len(), a_to_b.copied_values().len());
        std::mem::replace(&mut settled, now) == now
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (all_ids_from_a, all_values_from_a) = (a_to_b.copied_ids(), a_to_b.copied_values());
    // What b held when the switch answered (the replicator notes when it copied each record).
    let in_b_at_switch = a_to_b.copied_before(answered_at);
    let (ids_in_b, values_in_b) = (&in_b_at_switch, &in_b_at_switch);

    // Every record acknowledged in a (the replicator copied it, sooner or later) was in b at the
    // switch.
    let missing_grpc: Vec<String> = snapshot(&grpc_acked)
        .into_iter()
        .map(|(id, ..)| id)
        .filter(|id| all_ids_from_a.contains(id) && !ids_in_b.contains(id))
        .collect();
    let missing_payloads: Vec<String> = [&mqtt_acked, &amqp_acked]
        .into_iter()
        .flat_map(snapshot)
        .map(|(payload, ..)| payload)
        .filter(|payload| all_values_from_a.contains(payload) && !values_in_b.contains(payload))
        .collect();
    assert!(
        missing_grpc.is_empty() && missing_payloads.is_empty(),
        "acknowledged in a, not in b at the switch: {missing_grpc:?} {missing_payloads:?}"
    );
    let acked_in_a = snapshot(&grpc_acked)
        .iter()
        .filter(|(id, ..)| all_ids_from_a.contains(id))
        .count();

    // The group resumes in b: what it consumed after its last checkpoint comes again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_consumer.cancel();
    consumer.await??;
    let deliveries = snapshot(&delivered);
    let distinct: HashSet<&String> = deliveries.iter().map(|(id, ..)| id).collect();
    // The first record written in b after the switch that the group got.
    let first_delivery = deliveries
        .iter()
        .filter(|(_, _, origin, at)| origin == "b" && *at > asked)
        .map(|(.., at)| at.duration_since(asked).as_secs_f64())
        .fold(f64::INFINITY, f64::min);
    println!(
        "PLANNED switch a -> b: replication lag before {lag_before:.1} s; answered in {:.2} s, writes held {} ms ({} waited), \
         {} partitions checked; first delivery of a write in b {first_delivery:.2} s after the request; \
         gRPC {acked_in_a} acked in a, 0 missing in b; duplicates delivered {}",
        answered.as_secs_f64(),
        planned.paused_ms,
        planned.writes_held,
        planned.partitions,
        deliveries.len() - distinct.len(),
    );
    Ok(())
}
