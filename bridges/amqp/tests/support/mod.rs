//! What the limit tests share: a gateway served in process on an embedded log, and a raw AMQP
//! client that writes frames by hand (a well-behaved client library cannot send the frames these
//! tests need) and reads the gateway's.

#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use courier_amqp::{Config, Server};
use courier_gateway::{
    auth::{Auth, AuthConfig, Protected},
    limits::{ClientLimits, LimitsConfig},
    log::{FetchLimits, Log, Record, TopicPartition},
};
use fe2o3_amqp::{
    Connection,
    connection::ConnectionHandle,
    types::{
        definitions,
        performatives::{Begin, Open, Performative},
    },
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

pub mod frames;
pub mod named;

// Each test file uses some of these.
#[allow(unused_imports)]
pub use frames::{
    AMQP_HEADER, begin_performative, frame, nested_lists, open_performative, sender_attach,
};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult = Result<(), Error>;

/// Every wait is bounded by this.
pub const WAIT: Duration = Duration::from_secs(30);

/// A served gateway on an embedded log.
pub struct Gateway {
    pub log: Arc<dyn Log>,
    pub address: SocketAddr,
    drain: CancellationToken,
    serving: JoinHandle<courier_amqp::Result<()>>,
    auth: Auth,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Serves `config` (its listener moved to a free loopback port), anonymous clients allowed
    /// from loopback.
    pub async fn start(config: Config) -> Result<Self, Error> {
        Self::start_limited(config, LimitsConfig::default()).await
    }

    /// As [`Gateway::start`], every connection admitted (or not) by `limits`.
    pub async fn start_limited(config: Config, limits: LimitsConfig) -> Result<Self, Error> {
        let dir = tempfile::tempdir()?;
        let log = courier_gateway::testing::embedded(&dir.path().join("data")).await?;
        let auth = Auth::start(
            &AuthConfig::default(),
            Protected::new([]),
            &[],
            CancellationToken::new(),
        )
        .await?;
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            ..config
        };
        let access = auth
            .access("amqp", None)
            .with_limits(ClientLimits::new(&limits));
        let server = Server::bind(log.clone(), config, access).await?;
        let address = server.local_addr()?;
        let drain = CancellationToken::new();
        let serving = tokio::spawn(server.serve(drain.clone()));
        Ok(Self {
            log,
            address,
            drain,
            serving,
            auth,
            _dir: dir,
        })
    }

    /// A connection of fe2o3's client (no SASL: anonymous from loopback).
    pub async fn connect(&self, name: &str) -> Result<ConnectionHandle<()>, Error> {
        let url = format!("amqp://{}", self.address);
        Ok(tokio::time::timeout(
            WAIT,
            Connection::builder().container_id(name).open(url.as_str()),
        )
        .await??)
    }

    /// Every record of `topic`, partition by partition.
    pub async fn records(&self, topic: &str) -> Result<Vec<Record>, Error> {
        let description = self.log.describe_topic(topic).await?;
        let mut records = Vec::new();
        for partition in 0..description.partitions.len() {
            let partition = TopicPartition::new(topic, partition as i32);
            let fetched = self
                .log
                .fetch(&partition, 0, FetchLimits::default())
                .await?;
            records.extend(fetched.records);
        }
        Ok(records)
    }

    pub async fn stop(self) -> TestResult {
        self.drain.cancel();
        tokio::time::timeout(WAIT, self.serving).await???;
        self.auth.stop();
        Ok(())
    }
}

/// A client that speaks AMQP frame by frame.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub async fn connect(address: SocketAddr) -> Result<Self, Error> {
        Ok(Self {
            stream: TcpStream::connect(address).await?,
        })
    }

    /// Connected, past the protocol headers (no SASL) and OPEN: the gateway's OPEN.
    pub async fn open(address: SocketAddr) -> Result<(Self, Open), Error> {
        let mut raw = Self::connect(address).await?;
        raw.stream.write_all(&AMQP_HEADER).await?;
        raw.send(0, &open_performative(), &[]).await?;
        let mut header = [0u8; 8];
        tokio::time::timeout(WAIT, raw.stream.read_exact(&mut header)).await??;
        assert_eq!(header, AMQP_HEADER);
        match raw.next().await? {
            Some((_, Performative::Open(open), _)) => Ok((raw, open)),
            other => Err(format!("expected OPEN, got {other:?}").into()),
        }
    }

    /// Opened, with a session on channel 0 and a sender link (handle 0) to `topic` that the
    /// gateway has attached and given credit: the gateway's BEGIN.
    pub async fn sender(address: SocketAddr, topic: &str) -> Result<(Self, Begin), Error> {
        let (mut raw, _) = Self::open(address).await?;
        raw.send(0, &begin_performative(), &[]).await?;
        let begin = match raw.next().await? {
            Some((_, Performative::Begin(begin), _)) => begin,
            other => return Err(format!("expected BEGIN, got {other:?}").into()),
        };
        raw.send(0, &sender_attach(0, topic), &[]).await?;
        loop {
            match raw.next().await? {
                Some((_, Performative::Flow(flow), _)) if flow.link_credit.unwrap_or(0) > 0 => {
                    return Ok((raw, begin));
                }
                Some((_, Performative::Attach(_), _)) => {}
                other => return Err(format!("expected ATTACH and FLOW, got {other:?}").into()),
            }
        }
    }

    pub async fn send(
        &mut self,
        channel: u16,
        performative: &Performative,
        payload: &[u8],
    ) -> Result<(), Error> {
        let body = [serde_amqp::to_vec(performative)?, payload.to_vec()].concat();
        self.send_frame(channel, &body).await
    }

    /// A frame with this body, whatever it holds.
    pub async fn send_frame(&mut self, channel: u16, body: &[u8]) -> Result<(), Error> {
        self.stream.write_all(&frame(channel, body)).await?;
        Ok(())
    }

    /// The next frame that is not empty: channel, performative and payload; `None` when the
    /// gateway closed the socket.
    pub async fn next(&mut self) -> Result<Option<(u16, Performative, Vec<u8>)>, Error> {
        loop {
            let size = match tokio::time::timeout(WAIT, self.stream.read_u32()).await? {
                Ok(size) => size as usize,
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(error) => return Err(error.into()),
            };
            let mut rest = vec![0; size - 4];
            tokio::time::timeout(WAIT, self.stream.read_exact(&mut rest)).await??;
            let channel = u16::from_be_bytes([rest[2], rest[3]]);
            if rest.len() == 4 {
                continue;
            }
            let body = &rest[4..];
            let mut deserializer =
                serde_amqp::de::Deserializer::new(serde_amqp::read::SliceReader::new(body));
            let performative: Performative = serde::Deserialize::deserialize(&mut deserializer)?;
            let encoded = serde_amqp::to_vec(&performative)?.len();
            return Ok(Some((
                channel,
                performative,
                body[encoded.min(body.len())..].to_vec(),
            )));
        }
    }

    /// Reads until the gateway's CLOSE: its error; then the socket must close.
    pub async fn closed_with(&mut self) -> Result<definitions::Error, Error> {
        loop {
            match self.next().await? {
                Some((_, Performative::Close(close), _)) => {
                    let error = close.error.ok_or("CLOSE without an error")?;
                    let mut rest = Vec::new();
                    tokio::time::timeout(WAIT, self.stream.read_to_end(&mut rest)).await??;
                    return Ok(error);
                }
                Some(_) => {}
                None => return Err("the socket closed without a CLOSE".into()),
            }
        }
    }
}

/// A good sender and receiver on a connection of their own still work: `count` messages to a new
/// topic and back.
pub async fn a_good_client_works(gateway: &Gateway, topic: &str, count: usize) -> TestResult {
    use fe2o3_amqp::{Receiver, Sender, Session};
    let mut connection = gateway.connect("good").await?;
    let mut session = Session::begin(&mut connection).await?;
    let work = async {
        let mut sender = Sender::attach(&mut session, "good-sender", topic).await?;
        for i in 0..count {
            let outcome = sender.send(format!("good-{i}")).await?;
            assert!(outcome.is_accepted(), "{outcome:?}");
        }
        let mut receiver = Receiver::builder()
            .name("good-receiver")
            .source(
                fe2o3_amqp::types::messaging::Source::builder()
                    .address(topic)
                    .add_to_filter_using_legacy_format(
                        fe2o3_amqp::types::primitives::Symbol::from("courier:start"),
                        fe2o3_amqp::types::primitives::Value::String("earliest".into()),
                    )
                    .build(),
            )
            .attach(&mut session)
            .await?;
        for _ in 0..count {
            let delivery = receiver.recv::<String>().await?;
            receiver.accept(&delivery).await?;
        }
        sender.close().await?;
        receiver.close().await?;
        Ok::<_, Error>(())
    };
    tokio::time::timeout(WAIT, work).await??;
    session.end().await?;
    connection.close().await?;
    Ok(())
}
