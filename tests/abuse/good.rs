//! The well-behaved clients every attack runs beside: on each protocol a producer sends a fixed
//! number of messages, each waiting for its acknowledgement (a few at a time), and a consumer in a
//! consumer group receives and acknowledges them. A run is good when every message was
//! acknowledged and every acknowledged message delivered; its throughput and acknowledgement
//! latencies go into the report.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use courier_grpc::proto::v1::{self as pb, streams_client::StreamsClient};
use fe2o3_amqp::{
    Connection, Receiver, Sender, Session, sasl_profile::SaslProfile, types::messaging::Body,
    types::primitives::Value,
};
use rumqttc::v5::{
    AsyncClient, Event, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{Packet, PubAckReason},
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, metadata::MetadataValue};

use crate::common::{BoxError, Gateway, start_in_group, unique, value_of};

/// Messages each protocol's producer sends in one run: `COURIER_ABUSE_MESSAGES`, default 600 (enough
/// to see the attack's effect in a debug build; BENCHMARKS.md's figures use more, in release).
fn messages() -> usize {
    std::env::var("COURIER_ABUSE_MESSAGES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(600)
}
/// Acknowledgements a producer waits for at once.
const WINDOW: usize = 8;
/// Longest one run may take, attack or not: a run that needs more has failed.
const RUN_DEADLINE: Duration = Duration::from_secs(180);

/// The credentials the good clients log in with, when the gateway asks for some.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    pub(crate) user: String,
    pub(crate) password: String,
}

/// The three protocols' runs at once, and what they cost the gateway.
#[derive(Debug)]
pub(crate) struct Phase {
    pub(crate) runs: Vec<Run>,
    /// The gateway's CPU time (user and system, all threads) over the phase, per second of it:
    /// how many of the machine's cores the gateway used meanwhile, whatever else ran.
    pub(crate) gateway_cores: f64,
}

/// One protocol's run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) protocol: &'static str,
    pub(crate) elapsed: Duration,
    pub(crate) latencies: Vec<Duration>,
}

impl Run {
    pub(crate) fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn p99(&self) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get((sorted.len() * 99 / 100).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
}

/// Runs the good clients once unreported, then again for the baseline: the first run of a fresh
/// gateway pays for its start (topics created, groups first joined).
pub(crate) async fn baseline(
    gateway: &Gateway,
    tag: &str,
    login: Option<&Login>,
) -> Result<Phase, BoxError> {
    run_all(gateway, &format!("{tag}-warm"), login).await?;
    run_all(gateway, tag, login).await
}

/// Runs the three protocols' good clients at once under `tag` (which names their topics and
/// payloads); fails unless every message was acknowledged and delivered.
pub(crate) async fn run_all(
    gateway: &Gateway,
    tag: &str,
    login: Option<&Login>,
) -> Result<Phase, BoxError> {
    let (started, cpu_before) = (Instant::now(), cpu_time(gateway)?);
    let (grpc, mqtt, amqp) = tokio::time::timeout(RUN_DEADLINE, async {
        tokio::join!(
            grpc(gateway, tag, login),
            mqtt(gateway, tag, login),
            amqp(gateway, tag, login)
        )
    })
    .await
    .map_err(|_| format!("the good clients of {tag} did not finish within {RUN_DEADLINE:?}"))?;
    let cpu = cpu_time(gateway)?.saturating_sub(cpu_before);
    Ok(Phase {
        runs: vec![grpc?, mqtt?, amqp?],
        gateway_cores: cpu.as_secs_f64() / started.elapsed().as_secs_f64(),
    })
}

/// The gateway process's CPU time so far (user and system, all its threads).
fn cpu_time(gateway: &Gateway) -> Result<Duration, BoxError> {
    let pid = gateway.process_id().ok_or("the gateway is not running")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces, so split after its closing
    // parenthesis): state is the first, utime and stime the 12th and 13th, in clock ticks.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or("no command name in /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |index: usize| -> Result<u64, BoxError> {
        Ok(fields.get(index).ok_or("short /proc/<pid>/stat")?.parse()?)
    };
    // Linux reports these in USER_HZ: 100 a second on x86-64 and arm64, where this runs.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Prints a run against its baseline as the report line BENCHMARKS.md quotes.
pub(crate) fn report(attack: &str, baseline: &Phase, attacked: &Phase) {
    println!(
        "ABUSE {attack:<28} gateway cores used: baseline {:.2}, attacked {:.2}",
        baseline.gateway_cores, attacked.gateway_cores
    );
    for (before, during) in baseline.runs.iter().zip(&attacked.runs) {
        println!(
            "ABUSE {attack:<28} {:<5} baseline {:>7.0} msg/s p99 {:>6.1} ms | attacked {:>7.0} msg/s p99 {:>6.1} ms | throughput {:.2}x p99 {:.2}x",
            before.protocol,
            before.throughput(),
            before.p99().as_secs_f64() * 1e3,
            during.throughput(),
            during.p99().as_secs_f64() * 1e3,
            during.throughput() / before.throughput(),
            during.p99().as_secs_f64() / before.p99().as_secs_f64().max(1e-6),
        );
    }
}

fn payloads(tag: &str, protocol: &str) -> Vec<String> {
    (0..messages())
        .map(|n| format!("{tag}-{protocol}-{n}"))
        .collect()
}

/// Fails unless `delivered` holds every one of `sent`.
fn all_delivered(
    protocol: &str,
    sent: &[String],
    delivered: &HashSet<String>,
) -> Result<(), BoxError> {
    let missing: Vec<_> = sent.iter().filter(|p| !delivered.contains(*p)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{protocol}: {} acknowledged messages never delivered, e.g. {:?}",
            missing.len(),
            missing.first()
        )
        .into())
    }
}

fn basic(login: &Login) -> Result<MetadataValue<tonic::metadata::Ascii>, BoxError> {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", login.user, login.password));
    Ok(format!("Basic {token}").parse()?)
}

fn authorized<T>(message: T, login: Option<&Login>) -> Result<Request<T>, BoxError> {
    let mut request = Request::new(message);
    if let Some(login) = login {
        request
            .metadata_mut()
            .insert("authorization", basic(login)?);
    }
    Ok(request)
}

async fn grpc(gateway: &Gateway, tag: &str, login: Option<&Login>) -> Result<Run, BoxError> {
    let topic = unique(&format!("{tag}-grpc"));
    let channel = gateway.channel().await?;
    let mut client = StreamsClient::new(channel.clone());
    // The consumer first, reading from the start so nothing is missed while it joins.
    let (requests, outbound) = mpsc::channel(1024);
    requests
        .send(pb::SubscribeRequest {
            kind: Some(pb::subscribe_request::Kind::Start(start_in_group(
                &topic,
                &unique("good"),
                256,
            ))),
        })
        .await?;
    let mut responses = client
        .subscribe(authorized(ReceiverStream::new(outbound), login)?)
        .await?
        .into_inner();

    let sent = payloads(tag, "grpc");
    let started = Instant::now();
    let mut producers = tokio::task::JoinSet::new();
    for chunk in sent.chunks(sent.len().div_ceil(WINDOW)) {
        let (mut client, topic, chunk, login) = (
            StreamsClient::new(channel.clone()),
            topic.clone(),
            chunk.to_vec(),
            login.cloned(),
        );
        producers.spawn(async move {
            let mut latencies = Vec::with_capacity(chunk.len());
            for payload in chunk {
                let request = pb::ProduceRequest {
                    topic: topic.clone(),
                    records: vec![crate::common::record(None, &payload)],
                    request_id: 0,
                };
                let at = Instant::now();
                client.produce(authorized(request, login.as_ref())?).await?;
                latencies.push(at.elapsed());
            }
            Ok::<_, BoxError>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(sent.len());
    while let Some(done) = producers.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();

    let mut delivered = HashSet::new();
    while delivered.len() < sent.len() {
        let message = tokio::time::timeout(RUN_DEADLINE, responses.message())
            .await
            .map_err(|_| format!("grpc: {} of {} delivered", delivered.len(), sent.len()))??
            .ok_or("grpc: the subscribe stream ended")?;
        if let Some(pb::subscribe_response::Kind::Records(batch)) = message.kind {
            let acks = batch
                .records
                .iter()
                .map(|record| pb::PartitionOffset {
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                })
                .collect();
            delivered.extend(batch.records.iter().map(value_of));
            requests
                .send(pb::SubscribeRequest {
                    kind: Some(pb::subscribe_request::Kind::Ack(pb::Ack {
                        records: acks,
                        ranges: Vec::new(),
                    })),
                })
                .await?;
        }
    }
    all_delivered("grpc", &sent, &delivered)?;
    Ok(Run {
        protocol: "grpc",
        elapsed,
        latencies,
    })
}

fn mqtt_options(gateway: &Gateway, client_id: &str, login: Option<&Login>) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", gateway.mqtt.port());
    options.set_keep_alive(Duration::from_secs(30));
    if let Some(login) = login {
        options.set_credentials(&login.user, &login.password);
    }
    options
}

async fn mqtt(gateway: &Gateway, tag: &str, login: Option<&Login>) -> Result<Run, BoxError> {
    let topic = format!("abuse/{}", unique(tag));
    let sent = payloads(tag, "mqtt");

    // The subscriber: a shared subscription (a consumer group), QoS 1, acknowledging each message.
    let (subscriber, mut subscriber_events) =
        AsyncClient::new(mqtt_options(gateway, &unique("good-sub"), login), 1024);
    subscriber
        .subscribe(format!("$share/good/{topic}"), QoS::AtLeastOnce)
        .await?;
    loop {
        match subscriber_events.poll().await? {
            Event::Incoming(Packet::SubAck(_)) => break,
            Event::Incoming(Packet::ConnAck(ack))
                if ack.code != rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success =>
            {
                return Err(format!("mqtt subscriber refused: {ack:?}").into());
            }
            _ => {}
        }
    }
    let expected = sent.len();
    let receiving = tokio::spawn(async move {
        let mut delivered = HashSet::new();
        while delivered.len() < expected {
            if let Event::Incoming(Packet::Publish(publish)) = subscriber_events.poll().await? {
                delivered.insert(String::from_utf8_lossy(&publish.payload).into_owned());
            }
        }
        let _ = subscriber.disconnect().await;
        Ok::<_, BoxError>(delivered)
    });

    let mut options = mqtt_options(gateway, &unique("good-pub"), login);
    options.set_outgoing_inflight_upper_limit(WINDOW as u16);
    let (publisher, mut events) = AsyncClient::new(options, WINDOW);
    let started = Instant::now();
    let feeding = tokio::spawn({
        let (sent, topic) = (sent.clone(), topic.clone());
        async move {
            for payload in sent {
                publisher
                    .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                    .await?;
            }
            Ok::<_, BoxError>(publisher)
        }
    });
    let mut handed = std::collections::HashMap::new();
    let mut latencies = Vec::with_capacity(sent.len());
    while latencies.len() < sent.len() {
        match events.poll().await? {
            Event::Outgoing(rumqttc::Outgoing::Publish(packet_id)) => {
                handed.insert(packet_id, Instant::now());
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if ack.reason != PubAckReason::Success {
                    return Err(format!("mqtt: a publish was refused: {ack:?}").into());
                }
                if let Some(at) = handed.remove(&ack.pkid) {
                    latencies.push(at.elapsed());
                }
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    let publisher = feeding.await??;
    let _ = publisher.disconnect().await;
    let delivered = receiving.await??;
    all_delivered("mqtt", &sent, &delivered)?;
    Ok(Run {
        protocol: "mqtt",
        elapsed,
        latencies,
    })
}

async fn amqp_connection(
    gateway: &Gateway,
    name: &str,
    login: Option<&Login>,
) -> Result<fe2o3_amqp::connection::ConnectionHandle<()>, BoxError> {
    let mut builder = Connection::builder().container_id(name.to_owned());
    if let Some(login) = login {
        builder = builder.sasl_profile(SaslProfile::Plain {
            username: login.user.clone(),
            password: login.password.clone(),
        });
    }
    Ok(builder
        .open(format!("amqp://{}", gateway.amqp).as_str())
        .await?)
}

async fn amqp(gateway: &Gateway, tag: &str, login: Option<&Login>) -> Result<Run, BoxError> {
    let topic = unique(&format!("{tag}-amqp"));
    let sent = payloads(tag, "amqp");

    let mut receiving_connection = amqp_connection(gateway, &unique("good-recv"), login).await?;
    let mut receiving_session = Session::begin(&mut receiving_connection).await?;
    let source = format!("{topic}/groups/{}", unique("good"));
    let mut receiver =
        Receiver::attach(&mut receiving_session, "good-receiver", source.as_str()).await?;
    let expected = sent.len();
    let receiving = tokio::spawn(async move {
        let mut delivered = HashSet::new();
        while delivered.len() < expected {
            let delivery = receiver.recv::<Body<Value>>().await?;
            let payload = match delivery.body() {
                Body::Value(value) => match &value.0 {
                    Value::String(text) => text.clone(),
                    other => format!("{other:?}"),
                },
                Body::Data(data) => data
                    .iter()
                    .map(|section| String::from_utf8_lossy(&section.0).into_owned())
                    .collect(),
                other => format!("{other:?}"),
            };
            receiver.accept(&delivery).await?;
            delivered.insert(payload);
        }
        let _ = receiver.close().await;
        let _ = receiving_session.end().await;
        let _ = receiving_connection.close().await;
        Ok::<_, BoxError>(delivered)
    });

    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for (index, chunk) in sent.chunks(sent.len().div_ceil(WINDOW)).enumerate() {
        let (chunk, topic, login) = (chunk.to_vec(), topic.clone(), login.cloned());
        let name = unique(&format!("good-send-{index}"));
        let address = gateway.amqp;
        senders.spawn(async move {
            let mut builder = Connection::builder().container_id(name);
            if let Some(login) = login {
                builder = builder.sasl_profile(SaslProfile::Plain {
                    username: login.user,
                    password: login.password,
                });
            }
            let mut connection = builder.open(format!("amqp://{address}").as_str()).await?;
            let mut session = Session::begin(&mut connection).await?;
            let mut sender = Sender::attach(&mut session, "good-sender", topic.as_str()).await?;
            let mut latencies = Vec::with_capacity(chunk.len());
            for payload in chunk {
                let at = Instant::now();
                let outcome = sender.send(payload).await?;
                if !outcome.is_accepted() {
                    return Err(format!("amqp: a message was not accepted: {outcome:?}").into());
                }
                latencies.push(at.elapsed());
            }
            let _ = sender.close().await;
            let _ = session.end().await;
            let _ = connection.close().await;
            Ok::<_, BoxError>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(sent.len());
    while let Some(done) = senders.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();
    let delivered = receiving.await??;
    all_delivered("amqp", &sent, &delivered)?;
    Ok(Run {
        protocol: "amqp",
        elapsed,
        latencies,
    })
}
