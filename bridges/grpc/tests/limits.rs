//! The call limits of a real gRPC server (`GrpcServer::serve` on a loopback port, over the layered
//! embedded log) as a client sees them: calls over a limit are refused at once with
//! RESOURCE_EXHAUSTED while the others are served, unary calls past their deadline end with
//! DEADLINE_EXCEEDED, and streams outlive the unary deadline. Slow calls are made slow by a layer
//! that holds every Fetch until the test lets it go, so nothing depends on timing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use courier_gateway::{
    Result as LogResult,
    auth::{Auth, AuthConfig, Protected},
    config::GroupsConfig,
    log::{
        FetchLimits, Fetched, Log, TopicPartition, TopicSpec,
        layers::{Layer, Layered},
    },
};
use courier_grpc::{
    Config, GrpcListeners, GrpcServer,
    proto::v1::{self as pb, streams_client::StreamsClient},
};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Longest any wait of these tests may take.
const DEADLINE: Duration = Duration::from_secs(15);

const TOPIC: &str = "limits";

/// Holds every Fetch until released, counting those waiting.
#[derive(Debug)]
struct HeldFetches {
    waiting: AtomicUsize,
    arrived: Notify,
    released: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Layer for HeldFetches {
    async fn fetch(
        &self,
        inner: &dyn Log,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> LogResult<Fetched> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.arrived.notify_waiters();
        let mut released = self.released.clone();
        let _ = released.wait_for(|released| *released).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        inner.fetch(partition, offset, limits).await
    }
}

/// A gateway serving gRPC with `config`'s limits; dropping it stops the server.
struct Served {
    client: StreamsClient<Channel>,
    address: std::net::SocketAddr,
    held: Arc<Layered<HeldFetches, Arc<dyn Log>>>,
    release: watch::Sender<bool>,
    drain: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.drain.cancel();
    }
}

impl Served {
    async fn start(config: Config) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let dir = tempfile::tempdir()?;
        let log = courier_gateway::testing::embedded(dir.path()).await?;
        log.create_topic(TopicSpec::named(TOPIC).partitions(1))
            .await?;
        let (release, released) = watch::channel(false);
        let gate = HeldFetches {
            waiting: AtomicUsize::new(0),
            arrived: Notify::new(),
            released,
        };
        let held = Arc::new(Layered::over(gate, log));
        let drain = CancellationToken::new();
        let auth = Auth::start(
            &AuthConfig::default(),
            Protected::new([]),
            &[],
            drain.clone(),
        )
        .await?;
        let config = Config {
            listen: "127.0.0.1:0".parse()?,
            ..config
        };
        let listeners = GrpcListeners::bind(&config).await?;
        let address = listeners.addresses()?.first().ok_or("no address")?.1;
        let server = GrpcServer {
            log: held.clone(),
            access: auth.access("grpc", None),
            regions: None,
            config,
            groups: GroupsConfig::default(),
        };
        tokio::spawn(server.serve(listeners, drain.clone()));
        let client = StreamsClient::connect(format!("http://{address}")).await?;
        Ok(Self {
            client,
            address,
            held,
            release,
            drain,
            _dir: dir,
        })
    }

    /// Waits until `count` Fetch calls are held in the log.
    async fn fetches_held(&self, count: usize) -> TestResult {
        let gate = self.held.layer();
        tokio::time::timeout(DEADLINE, async {
            loop {
                let arrived = gate.arrived.notified();
                if gate.waiting.load(Ordering::Acquire) >= count {
                    return;
                }
                arrived.await;
            }
        })
        .await
        .map_err(|_| format!("{count} fetches never reached the log"))?;
        Ok(())
    }

    /// A client of its own, connecting from the loopback address `from` (another anonymous
    /// caller than the one at 127.0.0.1).
    async fn client_from(
        &self,
        from: std::net::IpAddr,
    ) -> Result<StreamsClient<Channel>, Box<dyn std::error::Error + Send + Sync>> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))?
            .local_address(Some(from))
            .connect()
            .await?;
        Ok(StreamsClient::new(channel))
    }

    /// Starts a Fetch on a clone of the client; it is held until released.
    fn fetch(&self) -> tokio::task::JoinHandle<Result<pb::FetchResponse, tonic::Status>> {
        self.fetch_by(&self.client)
    }

    /// [`Served::fetch`] by `client`.
    fn fetch_by(
        &self,
        client: &StreamsClient<Channel>,
    ) -> tokio::task::JoinHandle<Result<pb::FetchResponse, tonic::Status>> {
        let mut client = client.clone();
        tokio::spawn(async move {
            let request = pb::FetchRequest {
                topic: TOPIC.into(),
                partition: 0,
                offset: 0,
                ..Default::default()
            };
            client.fetch(request).await.map(tonic::Response::into_inner)
        })
    }

    /// Opens a Subscribe stream reading `TOPIC` from its start; the sender keeps it open.
    async fn subscribe(
        &self,
    ) -> Result<
        (
            mpsc::Sender<pb::SubscribeRequest>,
            tonic::Streaming<pb::SubscribeResponse>,
        ),
        tonic::Status,
    > {
        self.subscribe_by(&self.client).await
    }

    /// [`Served::subscribe`] by `client`.
    async fn subscribe_by(
        &self,
        client: &StreamsClient<Channel>,
    ) -> Result<
        (
            mpsc::Sender<pb::SubscribeRequest>,
            tonic::Streaming<pb::SubscribeResponse>,
        ),
        tonic::Status,
    > {
        let (requests, outbound) = mpsc::channel(16);
        let start = pb::SubscribeStart {
            topics: vec![TOPIC.into()],
            start: Some(pb::Position {
                kind: Some(pb::position::Kind::Earliest(true)),
            }),
            ..Default::default()
        };
        let _ = requests
            .send(pb::SubscribeRequest {
                kind: Some(pb::subscribe_request::Kind::Start(start)),
            })
            .await;
        let responses = tokio::time::timeout(
            DEADLINE,
            client.clone().subscribe(ReceiverStream::new(outbound)),
        )
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("the test's own wait"))??
        .into_inner();
        Ok((requests, responses))
    }

    async fn produce(&self, value: &str) -> Result<(), tonic::Status> {
        let request = pb::ProduceRequest {
            topic: TOPIC.into(),
            records: vec![pb::ProduceRecord {
                value: Some(value.as_bytes().to_vec().into()),
                ..Default::default()
            }],
            request_id: 0,
        };
        self.client.clone().produce(request).await?;
        Ok(())
    }
}

/// The next record's value on a Subscribe stream, skipping assignments.
async fn next_value(
    responses: &mut tonic::Streaming<pb::SubscribeResponse>,
) -> Result<String, String> {
    loop {
        let message = tokio::time::timeout(DEADLINE, responses.message())
            .await
            .map_err(|_| "no record came".to_owned())?
            .map_err(|status| status.to_string())?
            .ok_or("the stream ended")?;
        if let Some(pb::subscribe_response::Kind::Records(batch)) = message.kind
            && let Some(record) = batch.records.first()
        {
            return Ok(
                String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned(),
            );
        }
    }
}

fn assert_refused(status: &tonic::Status, key: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(key), "{status:?}");
}

/// Three unary calls at most: the fourth and fifth are refused at once while three are held, a
/// stream is still admitted (it has places of its own), and once the three finish, unary calls
/// are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_over_the_limit_are_refused_at_once_and_the_rest_served() -> TestResult {
    let served = Served::start(Config {
        max_unary_calls: 3,
        max_unary_calls_per_caller: Some(0),
        ..Config::default()
    })
    .await?;
    served.produce("r0").await?;
    let held: Vec<_> = (0..3).map(|_| served.fetch()).collect();
    served.fetches_held(3).await?;

    for _ in 0..2 {
        let refused = tokio::time::timeout(DEADLINE, served.fetch())
            .await
            .map_err(|_| "a call over the limit waited instead of being refused")??;
        assert_refused(
            &refused.err().ok_or("a fourth call was served")?,
            "grpc.max_unary_calls",
        );
    }
    let refused = served
        .produce("over")
        .await
        .err()
        .ok_or("a produce was served")?;
    assert_refused(&refused, "grpc.max_unary_calls");
    let (_keep, mut stream) = served.subscribe().await?;
    assert_eq!(next_value(&mut stream).await?, "r0");

    served.release.send(true)?;
    for call in held {
        let answer = tokio::time::timeout(DEADLINE, call).await???;
        assert_eq!(answer.records.len(), 1);
    }
    served.produce("after").await?;
    Ok(())
}

/// Two streams at most: a third is refused while unary calls go on; when one ends, its place is
/// free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_their_limit_are_refused_and_leave_unary_calls_alone() -> TestResult {
    let served = Served::start(Config {
        max_streaming_calls: 2,
        max_streaming_calls_per_caller: Some(0),
        ..Config::default()
    })
    .await?;
    let first = served.subscribe().await?;
    let _second = served.subscribe().await?;
    let refused = served
        .subscribe()
        .await
        .err()
        .ok_or("a third stream was admitted")?;
    assert_refused(&refused, "grpc.max_streaming_calls");
    served.produce("unary calls still go").await?;

    // The client goes away: the stream's place is freed with its response body.
    drop(first);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match served.subscribe().await {
            Ok(_third) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                if tokio::time::Instant::now() > deadline {
                    return Err("the ended stream's place was never freed".into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => return Err(status.into()),
        }
    }
    Ok(())
}

/// Two calls of each kind per caller: one caller's third stream and third unary call are refused
/// at once, naming the caller's limit, while another caller (an anonymous client from another
/// address) is served both; a caller's ended stream gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_at_its_share_is_refused_and_the_others_served() -> TestResult {
    let served = Served::start(Config {
        max_unary_calls_per_caller: Some(2),
        max_streaming_calls_per_caller: Some(2),
        ..Config::default()
    })
    .await?;
    let other = served.client_from("127.0.0.2".parse()?).await?;

    let first = served.subscribe().await?;
    let _second = served.subscribe().await?;
    let refused = served
        .subscribe()
        .await
        .err()
        .ok_or("a caller's third stream was admitted")?;
    assert_refused(&refused, "grpc.max_streaming_calls_per_caller");
    assert!(refused.message().contains("127.0.0.1"), "{refused:?}");
    let _others = (
        served.subscribe_by(&other).await?,
        served.subscribe_by(&other).await?,
    );

    let held: Vec<_> = (0..2).map(|_| served.fetch()).collect();
    served.fetches_held(2).await?;
    let refused = tokio::time::timeout(DEADLINE, served.fetch())
        .await
        .map_err(|_| "a call over the caller's limit waited instead of being refused")??;
    assert_refused(
        &refused
            .err()
            .ok_or("a caller's third unary call was served")?,
        "grpc.max_unary_calls_per_caller",
    );
    let others_call = served.fetch_by(&other);
    served.fetches_held(3).await?;
    served.release.send(true)?;
    for call in held.into_iter().chain([others_call]) {
        tokio::time::timeout(DEADLINE, call).await???;
    }

    drop(first);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while let Err(status) = served.subscribe().await {
        if status.code() != Code::ResourceExhausted {
            return Err(status.into());
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the caller's ended stream never gave its place back".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A unary call past `grpc.unary_timeout` ends with DEADLINE_EXCEEDED, and a Subscribe stream open
/// for several times that long still delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_end_at_their_deadline_and_streams_live_on() -> TestResult {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let served = Served::start(Config {
        unary_timeout: TIMEOUT,
        ..Config::default()
    })
    .await?;
    let (_keep, mut stream) = served.subscribe().await?;

    let cut = tokio::time::timeout(DEADLINE, served.fetch()).await??;
    let status = cut.err().ok_or("a held fetch was answered")?;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("grpc.unary_timeout"),
        "{status:?}"
    );

    tokio::time::sleep(TIMEOUT * 4).await;
    served.produce("still streaming").await?;
    assert_eq!(next_value(&mut stream).await?, "still streaming");
    Ok(())
}

/// A client's `grpc-timeout` shorter than the gateway's limit ends the call with
/// DEADLINE_EXCEEDED too. The call is made over bare HTTP/2: a gRPC client would cut it itself at
/// its deadline (tonic's with CANCELLED), before the server's answer could arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_shorter_deadline_is_honoured() -> TestResult {
    use prost::Message as _;

    let served = Served::start(Config::default()).await?;
    let socket = tokio::net::TcpStream::connect(served.address).await?;
    let (client, connection) = h2::client::handshake(socket).await?;
    tokio::spawn(connection);
    let mut client = client.ready().await?;
    let request = tonic::codegen::http::Request::post(format!(
        "http://{}/courier.v1.Streams/Fetch",
        served.address
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", "200m")
    .body(())?;
    let (answer, mut body) = client.send_request(request, false)?;
    let message = pb::FetchRequest {
        topic: TOPIC.into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
    frame.extend_from_slice(&message);
    body.send_data(frame.into(), true)?;

    let answer = tokio::time::timeout(DEADLINE, answer).await??;
    // A call that fails before any message answers in its headers alone ("trailers-only").
    let status = match answer.headers().get("grpc-status") {
        Some(status) => status.clone(),
        None => {
            let mut body = answer.into_body();
            while body.data().await.is_some() {}
            body.trailers()
                .await?
                .and_then(|trailers| trailers.get("grpc-status").cloned())
                .ok_or("no grpc-status")?
        }
    };
    assert_eq!(
        status.to_str()?,
        (Code::DeadlineExceeded as i32).to_string()
    );
    Ok(())
}
