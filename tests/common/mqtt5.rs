//! A raw MQTT 5 client, packet by packet (rumqttc's own codec), for tests that must stop an exchange
//! half way (leave after PUBREC, before PUBREL), which a full client library never does.

use std::{collections::VecDeque, net::SocketAddr, time::Duration};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::{
    QoS,
    v5::{
        ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
        Filter, Packet, PubAck, PubRel, Publish, Subscribe, SubscribeReasonCode,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::BoxError;

/// Longest a packet is waited for.
const PACKET_WAIT: Duration = Duration::from_secs(30);
/// Messages kept while waiting for a SUBACK: more is a server that sends without end.
const MAX_PENDING: usize = 5_000;
/// Largest packet read.
const MAX_PACKET: u32 = 1 << 20;

/// One MQTT 5 connection.
pub struct RawMqtt5 {
    stream: TcpStream,
    buffer: BytesMut,
    /// Messages read while waiting for another packet (a SUBACK), handed out first.
    pending: VecDeque<Packet>,
}

impl RawMqtt5 {
    /// Connects as `client_id`; a session kept `session_expiry` seconds after the connection ends
    /// (0: it ends with it). Returns the client and the CONNACK, which must be a success.
    pub async fn connect(
        address: SocketAddr,
        client_id: &str,
        clean_start: bool,
        session_expiry: u32,
    ) -> Result<(Self, ConnAck), BoxError> {
        let mut client = Self {
            stream: TcpStream::connect(address).await?,
            buffer: BytesMut::new(),
            pending: VecDeque::new(),
        };
        let mut properties = ConnectProperties::new();
        properties.session_expiry_interval = Some(session_expiry);
        let connect = Connect {
            keep_alive: 60,
            client_id: client_id.to_owned(),
            clean_start,
            properties: Some(properties),
        };
        client.send(Packet::Connect(connect, None, None)).await?;
        match client.read().await? {
            Some(Packet::ConnAck(connack)) if connack.code == ConnectReturnCode::Success => {
                Ok((client, connack))
            }
            other => {
                Err(format!("{client_id}: expected a successful CONNACK, got {other:?}").into())
            }
        }
    }

    pub async fn send(&mut self, packet: Packet) -> Result<(), BoxError> {
        let mut bytes = BytesMut::new();
        packet.write(&mut bytes, Some(MAX_PACKET))?;
        self.stream.write_all(&bytes).await?;
        Ok(())
    }

    /// The next packet (`None` once the server closed the connection); fails after `PACKET_WAIT`.
    pub async fn read(&mut self) -> Result<Option<Packet>, BoxError> {
        self.read_within(PACKET_WAIT)
            .await?
            .ok_or_else(|| format!("no packet within {PACKET_WAIT:?}").into())
    }

    /// The next packet within `limit`: `Ok(None)` when none came, `Ok(Some(None))` when the server
    /// closed the connection.
    pub async fn read_within(
        &mut self,
        limit: Duration,
    ) -> Result<Option<Option<Packet>>, BoxError> {
        if let Some(packet) = self.pending.pop_front() {
            return Ok(Some(Some(packet)));
        }
        self.read_from_network(limit).await
    }

    async fn read_from_network(
        &mut self,
        limit: Duration,
    ) -> Result<Option<Option<Packet>>, BoxError> {
        let reading = async {
            loop {
                match Packet::read(&mut self.buffer, Some(MAX_PACKET)) {
                    Ok(packet) => return Ok::<_, BoxError>(Some(packet)),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(error) => return Err(error.to_string().into()),
                }
                if self.stream.read_buf(&mut self.buffer).await? == 0 {
                    return Ok(None);
                }
            }
        };
        match tokio::time::timeout(limit, reading).await {
            Ok(packet) => packet.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Subscribes to `filter` at `qos` with packet id `pkid` and expects it granted.
    pub async fn subscribe(&mut self, pkid: u16, filter: &str, qos: QoS) -> Result<(), BoxError> {
        let mut subscribe = Subscribe::new(Filter::new(filter, qos), None);
        subscribe.pkid = pkid;
        self.send(Packet::Subscribe(subscribe)).await?;
        // Messages (retained ones) may come before the SUBACK; they are read next by the caller.
        loop {
            match self.read_from_network(PACKET_WAIT).await? {
                Some(Some(Packet::SubAck(suback))) if suback.pkid == pkid => {
                    return match suback.return_codes.as_slice() {
                        [SubscribeReasonCode::Success(_)] => Ok(()),
                        codes => Err(format!("SUBSCRIBE {filter}: {codes:?}").into()),
                    };
                }
                Some(Some(packet @ Packet::Publish(_))) if self.pending.len() < MAX_PENDING => {
                    self.pending.push_back(packet);
                }
                other => {
                    return Err(format!(
                        "SUBSCRIBE {filter}: got {other:?} ({} messages waiting)",
                        self.pending.len()
                    )
                    .into());
                }
            }
        }
    }

    /// Publishes at QoS 1 with packet id `pkid` and waits for its PUBACK.
    pub async fn publish_acked(
        &mut self,
        pkid: u16,
        topic: &str,
        payload: &str,
        retain: bool,
    ) -> Result<(), BoxError> {
        let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_owned(), None);
        publish.pkid = pkid;
        publish.retain = retain;
        self.send(Packet::Publish(publish)).await?;
        match self.read().await? {
            Some(Packet::PubAck(PubAck { pkid: acked, .. })) if acked == pkid => Ok(()),
            other => Err(format!("PUBLISH {pkid} to {topic}: got {other:?}").into()),
        }
    }

    /// Acknowledges a delivered QoS 1 message.
    pub async fn puback(&mut self, pkid: u16) -> Result<(), BoxError> {
        self.send(Packet::PubAck(PubAck::new(pkid, None))).await
    }

    /// Releases QoS 2 packet id `pkid` (PUBREL).
    pub async fn pubrel(&mut self, pkid: u16) -> Result<(), BoxError> {
        self.send(Packet::PubRel(PubRel::new(pkid, None))).await
    }

    /// Ends the connection with a normal DISCONNECT (the session stays, as its expiry says).
    pub async fn disconnect(mut self) -> Result<(), BoxError> {
        self.send(Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )))
        .await?;
        self.stream.shutdown().await?;
        Ok(())
    }
}
