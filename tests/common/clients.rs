//! MQTT and AMQP clients that publish numbered messages at least once and keep what the gateway
//! acknowledged, for tests that check nothing acknowledged is lost (a drain, a region failover).

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use fe2o3_amqp::{Connection, Sender, Session};
use rumqttc::{
    Outgoing,
    v5::{
        AsyncClient, ConnectionError, Event, MqttOptions, StateError,
        mqttbytes::{
            QoS,
            v5::{Packet, PubAckReason},
        },
    },
};
use tokio_util::sync::CancellationToken;

/// What a client got acknowledged: payload, when it was handed to the client, when it was acknowledged.
pub type Acked = Arc<Mutex<Vec<(String, Instant, Instant)>>>;

/// The payloads acknowledged so far.
pub fn acked_payloads(acked: &Acked) -> Vec<String> {
    lock(acked)
        .iter()
        .map(|(payload, ..)| payload.clone())
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a publisher treats the end of its connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnDisconnect {
    /// Return what the server said (a drain test).
    Stop,
    /// Reconnect and go on until cancelled, as a device would.
    Reconnect,
}

/// An MQTT 5 client publishing `<prefix>1`, `<prefix>2`, ... to `topic` at QoS 1, one every 5 ms,
/// adding each payload PUBACKed with success to `acked`; returns why it stopped (the server's
/// DISCONNECT reason, or "cancelled").
pub fn spawn_mqtt_publisher(
    address: SocketAddr,
    topic: &str,
    prefix: &str,
    acked: Acked,
    on_disconnect: OnDisconnect,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<String, String>> {
    let mut options = MqttOptions::new(format!("{prefix}publisher"), "127.0.0.1", address.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 10);
    let (topic, prefix) = (topic.to_owned(), prefix.to_owned());
    tokio::spawn(async move {
        // Payloads in the order they were handed to the client, waiting for their packet id.
        let queued = Arc::new(Mutex::new(VecDeque::new()));
        let publisher = tokio::spawn({
            let queued = queued.clone();
            async move {
                for n in 1_u64.. {
                    let payload = format!("{prefix}{n}");
                    lock(&queued).push_back((payload.clone(), Instant::now()));
                    if client
                        .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        let mut in_flight = HashMap::new();
        let told = loop {
            let event = tokio::select! {
                () = stop.cancelled() => break "cancelled".to_owned(),
                event = events.poll() => event,
            };
            match event {
                Ok(Event::Outgoing(Outgoing::Publish(packet_id))) => {
                    // A retransmission after a reconnect keeps its packet id and its payload.
                    if let std::collections::hash_map::Entry::Vacant(entry) =
                        in_flight.entry(packet_id)
                    {
                        let next = lock(&queued).pop_front();
                        entry.insert(next.ok_or("a publish went out that was never queued")?);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some((payload, sent)) = in_flight.remove(&ack.pkid)
                        && ack.reason == PubAckReason::Success
                    {
                        lock(&acked).push((payload, sent, Instant::now()));
                    }
                }
                Ok(_) => {}
                Err(ConnectionError::MqttState(StateError::ServerDisconnect {
                    reason_code,
                    reason_string,
                })) if on_disconnect == OnDisconnect::Stop => {
                    break format!("{reason_code:?} {reason_string:?}");
                }
                Err(error) if on_disconnect == OnDisconnect::Stop => {
                    break format!("connection error without DISCONNECT: {error}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        publisher.abort();
        Ok(told)
    })
}

/// An AMQP sender sending `<prefix>1`, `<prefix>2`, ... to `topic` unsettled, one every 5 ms, adding
/// each message the gateway accepted to `acked`; returns why it stopped (the link's error and the
/// connection's close, or "cancelled"). With `Reconnect` a failed link is attached again on a new
/// connection and the unaccepted message is sent again.
pub fn spawn_amqp_sender(
    address: SocketAddr,
    topic: &str,
    prefix: &str,
    acked: Acked,
    on_disconnect: OnDisconnect,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<String, String>> {
    let url = format!("amqp://{address}");
    let (topic, prefix) = (topic.to_owned(), prefix.to_owned());
    tokio::spawn(async move {
        let mut n = 1_u64;
        while !stop.is_cancelled() {
            let attached = async {
                let mut connection = Connection::open(format!("{prefix}sender"), url.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut session = Session::begin(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
                let sender = Sender::attach(&mut session, format!("{prefix}link"), topic.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((connection, session, sender))
            };
            let (mut connection, _session, mut sender) = match attached.await {
                Ok(link) => link,
                Err(error) if on_disconnect == OnDisconnect::Stop => return Err(error),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let told = loop {
                let body = format!("{prefix}{n}");
                let sent = Instant::now();
                let outcome = tokio::select! {
                    () = stop.cancelled() => break None,
                    outcome = sender.send(body.clone()) => outcome,
                };
                match outcome {
                    Ok(outcome) if outcome.is_accepted() => {
                        lock(&acked).push((body, sent, Instant::now()));
                        n += 1;
                    }
                    Ok(outcome) => break Some(format!("not accepted: {outcome:?}")),
                    Err(error) => break Some(format!("{error:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            let Some(told) = told else {
                let _ = sender.close().await;
                let _ = connection.close().await;
                break;
            };
            if on_disconnect == OnDisconnect::Stop {
                // The connection's close (with its condition) is what the client is told; read it.
                let closed = connection.on_close().await;
                return Ok(format!("{told}; connection: {closed:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok("cancelled".to_owned())
    })
}
