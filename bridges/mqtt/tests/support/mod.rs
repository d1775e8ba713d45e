//! What the packet-level tests share: an endpoint in process over a real embedded log, and a raw
//! MQTT 3.1.1 client whose packets are written and read with rumqttd's codec.
// Each test crate uses some of these.
#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use courier_gateway::{
    auth::{Access, Protected},
    config::{EmbeddedConfig, GroupsConfig, TopicsConfig},
    log::{Embedded, FetchLimits, Log, TopicPartition, layers},
};
use courier_mqtt::{Config, Server, codec::outgoing_publish};
use rumqttd::protocol::{
    Connect, ConnectReturnCode, Filter, Login, Packet, Protocol, PubComp, PubCompReason, PubRec,
    PubRecReason, PubRel, PubRelReason, QoS, RetainForwardRule, Subscribe, v4::V4,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Longest any single wait in these tests.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

pub(crate) struct Endpoint {
    pub(crate) address: SocketAddr,
    pub(crate) log: Arc<dyn Log>,
    pub(crate) drain: CancellationToken,
    access: Access,
    _dir: tempfile::TempDir,
}

/// The gateway's own topics, as the binary protects them.
pub(crate) fn protected() -> Protected {
    Protected::new(["mqtt.sessions", "mqtt.retained", "mqtt.qos2"].map(String::from))
}

impl Endpoint {
    /// An endpoint that serves anonymous loopback clients (the default with no `[auth]`).
    pub(crate) async fn start(
        config: Config,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_over(config, |log| log).await
    }

    /// An endpoint over the embedded log as `wrap` makes it look.
    pub(crate) async fn start_over(
        config: Config,
        wrap: impl FnOnce(Arc<dyn Log>) -> Arc<dyn Log>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_with(config, Access::loopback("mqtt", protected()), wrap).await
    }

    /// An endpoint whose clients `access` authenticates and authorizes.
    pub(crate) async fn start_with_access(
        config: Config,
        access: Access,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Self::start_with(config, access, |log| log).await
    }

    async fn start_with(
        config: Config,
        access: Access,
        wrap: impl FnOnce(Arc<dyn Log>) -> Arc<dyn Log>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let dir = tempfile::tempdir()?;
        let topics = TopicsConfig::default();
        let embedded = Embedded::open(
            &EmbeddedConfig::in_dir(dir.path()),
            topics.clone(),
            GroupsConfig::default(),
            "test",
        )
        .await?;
        let log = wrap(Arc::new(layers::stack(embedded, &topics)));
        let server = Server::bind(
            log.clone(),
            Config {
                listen: "127.0.0.1:0".parse()?,
                ..config
            },
            access.clone(),
        )
        .await?;
        let address = server.local_addr()?;
        let drain = CancellationToken::new();
        tokio::spawn(server.serve(drain.clone()));
        Ok(Self {
            address,
            log,
            drain,
            access,
            _dir: dir,
        })
    }

    /// Another replica: a second MQTT server over the same log, as a second gateway over one Kafka
    /// cluster. Stops with the endpoint.
    pub(crate) async fn replica(
        &self,
    ) -> Result<SocketAddr, Box<dyn std::error::Error + Send + Sync>> {
        self.replica_with(Config::default()).await
    }

    /// [`Endpoint::replica`] with `config`.
    pub(crate) async fn replica_with(
        &self,
        config: Config,
    ) -> Result<SocketAddr, Box<dyn std::error::Error + Send + Sync>> {
        let server = Server::bind(
            self.log.clone(),
            Config {
                listen: "127.0.0.1:0".parse()?,
                ..config
            },
            self.access.clone(),
        )
        .await?;
        let address = server.local_addr()?;
        tokio::spawn(server.serve(self.drain.clone()));
        Ok(address)
    }

    /// How many records of the default messages topic hold `value`.
    pub(crate) async fn copies_of(
        &self,
        value: &[u8],
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let stored = self.stored_values().await?;
        Ok(stored.iter().filter(|stored| &stored[..] == value).count())
    }

    /// Every record of the default messages topic.
    pub(crate) async fn stored_values(
        &self,
    ) -> Result<Vec<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
        self.values_of("mqtt.messages").await
    }

    /// Every record's value in `topic`.
    pub(crate) async fn values_of(
        &self,
        topic: &str,
    ) -> Result<Vec<Bytes>, Box<dyn std::error::Error + Send + Sync>> {
        let description = self.log.describe_topic(topic).await?;
        let mut values = Vec::new();
        for partition in description.partitions {
            let fetched = self
                .log
                .fetch(
                    &TopicPartition::new(topic, partition.partition),
                    partition.low,
                    FetchLimits::default(),
                )
                .await?;
            values.extend(
                fetched
                    .records
                    .into_iter()
                    .filter_map(|record| record.value),
            );
        }
        Ok(values)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.drain.cancel();
    }
}

/// A raw MQTT 3.1.1 client.
pub(crate) struct RawClient {
    pub(crate) stream: TcpStream,
    pub(crate) buffer: BytesMut,
    /// The packet id of the last PUBLISH read (rumqttd keeps it private).
    pub(crate) last_publish_pkid: Option<u16>,
}

impl RawClient {
    pub(crate) async fn open(address: SocketAddr) -> Result<Self, std::io::Error> {
        Ok(Self {
            stream: TcpStream::connect(address).await?,
            buffer: BytesMut::new(),
            last_publish_pkid: None,
        })
    }

    pub(crate) async fn connect(
        address: SocketAddr,
        client_id: &str,
        clean_session: bool,
    ) -> Result<(Self, bool), Box<dyn std::error::Error + Send + Sync>> {
        let mut client = Self::open(address).await?;
        client
            .send(connect_packet(client_id, clean_session, 30, None))
            .await?;
        match client.read().await? {
            Some(Packet::ConnAck(connack, _)) if connack.code == ConnectReturnCode::Success => {
                Ok((client, connack.session_present))
            }
            other => Err(format!("expected a CONNACK, got {other:?}").into()),
        }
    }

    pub(crate) async fn send(
        &mut self,
        packet: Packet,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut bytes = BytesMut::new();
        V4.write(packet, &mut bytes)?;
        self.send_bytes(&bytes).await
    }

    pub(crate) async fn send_bytes(
        &mut self,
        bytes: &[u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next packet, `None` once the server closed the connection.
    pub(crate) async fn read(
        &mut self,
    ) -> Result<Option<Packet>, Box<dyn std::error::Error + Send + Sync>> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let pkid = publish_packet_id(&self.buffer);
                match V4.read_mut(&mut self.buffer, 1 << 20) {
                    Ok(packet @ Packet::Publish(..)) => {
                        self.last_publish_pkid = pkid;
                        return Ok(Some(packet));
                    }
                    Ok(packet) => return Ok(Some(packet)),
                    Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
                    Err(error) => return Err(error.into()),
                }
                match self.stream.read_buf(&mut self.buffer).await {
                    Ok(0) => return Ok(None),
                    Ok(_) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                        return Ok(None);
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        })
        .await?
    }

    /// Reads until the server closes the connection; fails if it does not within the deadline.
    pub(crate) async fn expect_closed(&mut self) -> TestResult {
        while self.read().await?.is_some() {}
        Ok(())
    }
}

/// The packet id of the QoS 1 or 2 PUBLISH at the start of `bytes`: after the fixed header and the
/// topic name.
pub(crate) fn publish_packet_id(bytes: &[u8]) -> Option<u16> {
    let first = *bytes.first()?;
    if first >> 4 != 3 || (first >> 1) & 0b11 == 0 {
        return None;
    }
    let length_bytes = bytes[1..]
        .iter()
        .take(4)
        .position(|byte| byte & 0x80 == 0)?
        + 1;
    let topic_at = 1 + length_bytes;
    let topic_len = usize::from(u16::from_be_bytes([
        *bytes.get(topic_at)?,
        *bytes.get(topic_at + 1)?,
    ]));
    let pkid_at = topic_at + 2 + topic_len;
    Some(u16::from_be_bytes([
        *bytes.get(pkid_at)?,
        *bytes.get(pkid_at + 1)?,
    ]))
}

pub(crate) fn connect_packet(
    client_id: &str,
    clean_session: bool,
    keep_alive: u16,
    login: Option<(&str, &str)>,
) -> Packet {
    Packet::Connect(
        Connect {
            keep_alive,
            client_id: client_id.into(),
            clean_session,
        },
        None,
        None,
        None,
        login.map(|(username, password)| Login {
            username: username.into(),
            password: password.into(),
        }),
    )
}

pub(crate) fn publish_bytes(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    pkid: u16,
    dup: bool,
) -> BytesMut {
    let mut bytes = BytesMut::new();
    let publish = outgoing_publish(topic, payload, qos, pkid, false);
    V4.write(Packet::Publish(publish, None), &mut bytes)
        .unwrap_or_default();
    if dup {
        bytes[0] |= 0b1000;
    }
    bytes
}

pub(crate) fn subscribe_packet(pkid: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(
        Subscribe {
            pkid,
            filters: vec![Filter {
                path: filter.into(),
                qos,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            }],
        },
        None,
    )
}

/// Publishes at QoS 1 and expects the PUBACK.
pub(crate) async fn publish_acked(
    client: &mut RawClient,
    topic: &str,
    payload: &[u8],
    pkid: u16,
) -> TestResult {
    client
        .send_bytes(&publish_bytes(
            topic,
            payload,
            QoS::AtLeastOnce,
            pkid,
            false,
        ))
        .await?;
    match client.read().await? {
        Some(Packet::PubAck(ack, _)) if ack.pkid == pkid => Ok(()),
        other => Err(format!("expected PUBACK {pkid}, got {other:?}").into()),
    }
}

/// Sends the QoS 2 message with packet id 7 (as a retransmission when `dup`) and expects PUBREC 7.
pub(crate) async fn publish_expecting_pubrec(client: &mut RawClient, dup: bool) -> TestResult {
    client
        .send_bytes(&publish_bytes(
            "q/2",
            b"exactly-once",
            QoS::ExactlyOnce,
            7,
            dup,
        ))
        .await?;
    match client.read().await? {
        Some(Packet::PubRec(rec, _)) if rec.pkid == 7 => Ok(()),
        other => Err(format!("expected PUBREC 7, got {other:?}").into()),
    }
}

pub(crate) fn pubrec(pkid: u16) -> Packet {
    Packet::PubRec(
        PubRec {
            pkid,
            reason: PubRecReason::Success,
        },
        None,
    )
}

pub(crate) fn pubrel(pkid: u16) -> Packet {
    Packet::PubRel(
        PubRel {
            pkid,
            reason: PubRelReason::Success,
        },
        None,
    )
}

pub(crate) fn pubcomp(pkid: u16) -> Packet {
    Packet::PubComp(
        PubComp {
            pkid,
            reason: PubCompReason::Success,
        },
        None,
    )
}

/// Sends PUBREL and expects PUBCOMP.
pub(crate) async fn release(client: &mut RawClient, pkid: u16) -> TestResult {
    client.send(pubrel(pkid)).await?;
    match client.read().await? {
        Some(Packet::PubComp(comp, _)) if comp.pkid == pkid => Ok(()),
        other => Err(format!("expected PUBCOMP {pkid}, got {other:?}").into()),
    }
}
