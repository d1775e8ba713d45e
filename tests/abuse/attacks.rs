//! The attacks, each from its own loopback address (127.0.0.2) where the gateway counts clients by
//! address, so the good clients (from 127.0.0.1) are other clients to it, as they would be.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{amqp_frames, common::BoxError};

/// The attacker's address.
pub(crate) const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A TCP connection to `target` from the attacker's address.
pub(crate) async fn connect_from_attacker(target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ATTACKER, 0))?;
    tokio::time::timeout(Duration::from_secs(10), socket.connect(target))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Opens `total` connections round-robin over `targets`, 256 at a time, and keeps those the
/// gateway accepted: the flood is held for as long as the returned streams live.
pub(crate) async fn flood(targets: &[SocketAddr], total: usize) -> Vec<TcpStream> {
    let mut opening = JoinSet::new();
    let mut held = Vec::with_capacity(total);
    for n in 0..total {
        if opening.len() >= 256
            && let Some(Ok(Ok(stream))) = opening.join_next().await
        {
            held.push(stream);
        }
        opening.spawn(connect_from_attacker(targets[n % targets.len()]));
    }
    while let Some(opened) = opening.join_next().await {
        if let Ok(Ok(stream)) = opened {
            held.push(stream);
        }
    }
    held
}

/// What a slowloris connection saw.
#[derive(Debug)]
pub(crate) enum Dripped {
    /// The gateway closed it after this long.
    Closed(Duration),
    /// Still open when the attack stopped.
    Open,
    /// It never connected.
    Refused,
}

/// `connections` connections to `target`, each sending `handshake` one byte every `every`, until
/// the gateway closes it or `stop` fires.
pub(crate) fn slowloris(
    target: SocketAddr,
    handshake: &'static [u8],
    connections: usize,
    every: Duration,
    stop: CancellationToken,
) -> JoinSet<Dripped> {
    let mut dripping = JoinSet::new();
    for _ in 0..connections {
        let stop = stop.clone();
        dripping.spawn(async move {
            let Ok(mut stream) = connect_from_attacker(target).await else {
                return Dripped::Refused;
            };
            let opened = Instant::now();
            let mut buffer = [0_u8; 256];
            for byte in handshake.iter().cycle() {
                tokio::select! {
                    () = stop.cancelled() => return Dripped::Open,
                    read = stream.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => return Dripped::Closed(opened.elapsed()),
                        // An answer (a refusal): keep reading until the gateway closes.
                        Ok(_) => continue,
                    },
                    () = tokio::time::sleep(every) => {
                        if stream.write_all(&[*byte]).await.is_err() {
                            return Dripped::Closed(opened.elapsed());
                        }
                    }
                }
            }
            Dripped::Open
        });
    }
    dripping
}

/// Sends `bytes` on `connections` fresh connections to `target` (the attacker's), then waits until
/// the gateway closes each; how many it closed within `deadline`.
pub(crate) async fn garbage(
    target: SocketAddr,
    bytes: Vec<u8>,
    connections: usize,
    deadline: Duration,
) -> Result<usize, BoxError> {
    let bytes = Arc::new(bytes);
    let closed = Arc::new(AtomicUsize::new(0));
    let mut sending = JoinSet::new();
    for _ in 0..connections {
        let (bytes, closed) = (bytes.clone(), closed.clone());
        sending.spawn(async move {
            let Ok(mut stream) = connect_from_attacker(target).await else {
                return;
            };
            // The gateway may close before it has read it all: a failed write is a close too.
            let _ = stream.write_all(&bytes).await;
            let mut buffer = vec![0_u8; 64 * 1024];
            let until_closed = async {
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            };
            if tokio::time::timeout(deadline, until_closed).await.is_ok() {
                closed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while sending.join_next().await.is_some() {}
    Ok(closed.load(Ordering::Relaxed))
}

/// On `connections` fresh AMQP connections to `target` (anonymous, as loopback clients are served),
/// attaches a sender to `topic` and, once the gateway gives it credit, sends one message whose
/// amqp-value holds `depth` nested lists (over transfers that each fit a frame); how many of the
/// connections the gateway then closed within `deadline`, saying the value was nested too deep.
pub(crate) async fn nested_amqp_values(
    target: SocketAddr,
    topic: &str,
    depth: usize,
    connections: usize,
    deadline: Duration,
) -> Result<usize, BoxError> {
    let opening = Arc::new(amqp_sender_frames(topic)?);
    let message = Arc::new(nested_transfers(depth)?);
    let closed = Arc::new(AtomicUsize::new(0));
    let mut sending = JoinSet::new();
    for _ in 0..connections {
        let (opening, message, closed) = (opening.clone(), message.clone(), closed.clone());
        sending.spawn(async move {
            let Ok(mut stream) = connect_from_attacker(target).await else {
                return;
            };
            let attack = async {
                stream.write_all(&opening).await?;
                let mut header = [0_u8; 8];
                stream.read_exact(&mut header).await?;
                // Frames until the gateway's FLOW (performative code 0x13) gives the link credit.
                loop {
                    let size = stream.read_u32().await? as usize;
                    let mut rest = vec![0_u8; size.saturating_sub(4)];
                    stream.read_exact(&mut rest).await?;
                    let offset =
                        (usize::from(rest.first().copied().unwrap_or(2)) * 4).saturating_sub(4);
                    if rest.get(offset..offset + 3) == Some(&[0x00, 0x53, 0x13]) {
                        break;
                    }
                }
                // The gateway may close before it has read it all: a failed write is a close too.
                let _ = stream.write_all(&message).await;
                let mut answer = Vec::new();
                let mut buffer = vec![0_u8; 64 * 1024];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => answer.extend_from_slice(&buffer[..read]),
                    }
                }
                Ok::<_, std::io::Error>(answer)
            };
            // Closed, and for the nesting: the CLOSE's description names the depth decoded.
            if let Ok(Ok(answer)) = tokio::time::timeout(deadline, attack).await
                && answer.windows(14).any(|window| window == b"deeper than 64")
            {
                closed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while sending.join_next().await.is_some() {}
    Ok(closed.load(Ordering::Relaxed))
}

/// AMQP's header (no SASL), OPEN, BEGIN on channel 0 and ATTACH of a sender (handle 0) to `topic`.
fn amqp_sender_frames(topic: &str) -> Result<Vec<u8>, BoxError> {
    let mut bytes = amqp_frames::AMQP_HEADER.to_vec();
    for performative in [
        amqp_frames::open_performative(),
        amqp_frames::begin_performative(),
        amqp_frames::sender_attach(0, topic),
    ] {
        bytes.extend(amqp_frames::frame(0, &serde_amqp::to_vec(&performative)?));
    }
    Ok(bytes)
}

/// A message whose amqp-value section holds `depth` lists (list32), each holding the next, around
/// a null, as the TRANSFER frames (handle 0, delivery 0) that carry it, 60,000 bytes of it each.
fn nested_transfers(depth: usize) -> Result<Vec<u8>, BoxError> {
    use fe2o3_amqp::types::{
        definitions::Handle,
        performatives::{Performative, Transfer},
        primitives::Binary,
    };
    let message = [vec![0x00, 0x53, 0x77], amqp_frames::nested_lists(depth)].concat();
    let pieces: Vec<&[u8]> = message.chunks(60_000).collect();
    let mut bytes = Vec::new();
    for (n, piece) in pieces.iter().enumerate() {
        let first = n == 0;
        let transfer = Performative::Transfer(Transfer {
            handle: Handle(0),
            delivery_id: first.then_some(0),
            delivery_tag: first.then(|| Binary::from(vec![0])),
            message_format: Some(0),
            settled: None,
            more: n + 1 < pieces.len(),
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        });
        bytes.extend(amqp_frames::frame(
            0,
            &[serde_amqp::to_vec(&transfer)?, piece.to_vec()].concat(),
        ));
    }
    Ok(bytes)
}

/// An MQTT 3.1.1 CONNECT for `client_id` with `username`/`password`.
pub(crate) fn mqtt_connect(client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, text: &[u8]) {
        out.extend_from_slice(&(text.len() as u16).to_be_bytes());
        out.extend_from_slice(text);
    }
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4);
    body.push(0x02 | if login.is_some() { 0xC0 } else { 0 });
    body.extend_from_slice(&60_u16.to_be_bytes());
    string(&mut body, client_id.as_bytes());
    if let Some((user, password)) = login {
        string(&mut body, user.as_bytes());
        string(&mut body, password.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut length = body.len();
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if length == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// The bytes an AMQP client sends to log in with SASL PLAIN, sent at once without waiting for the
/// server's mechanisms (which a server reads in order): the SASL protocol header, then a frame
/// holding a `sasl-init` (mechanism `PLAIN`, initial response `\0user\0password`).
/// The names and password must be short (each length is one byte on the wire).
pub(crate) fn amqp_sasl_plain(user: &str, password: &str) -> Vec<u8> {
    let response = [b"\0", user.as_bytes(), b"\0", password.as_bytes()].concat();
    // The fields, each an AMQP value: the symbol PLAIN (sym8), the response (vbin8).
    let mut fields = vec![0xa3, 5];
    fields.extend_from_slice(b"PLAIN");
    fields.push(0xa0);
    fields.push(response.len() as u8);
    fields.extend(response);
    // sasl-init: described by its code 0x41 (smallulong), a list8 of two fields.
    let mut body = vec![0x00, 0x53, 0x41, 0xc0];
    body.push((fields.len() + 1) as u8);
    body.push(2);
    body.extend(fields);
    // A SASL frame (type 1) on channel 0, its header two 4-byte words long.
    let size = (8 + body.len()) as u32;
    let mut bytes = b"AMQP\x03\x01\x00\x00".to_vec();
    bytes.extend_from_slice(&size.to_be_bytes());
    bytes.extend_from_slice(&[2, 1, 0, 0]);
    bytes.extend(body);
    bytes
}

/// A stream that stops reading when told: what a client that stops reading its socket looks like
/// to the gateway, under a client library that would otherwise read on in the background.
pub(crate) struct Stalling<S> {
    inner: S,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl<S> Stalling<S> {
    /// `inner`, and the switch that stops its reading for good.
    pub(crate) fn new(inner: S) -> (Self, Arc<std::sync::atomic::AtomicBool>) {
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (
            Self {
                inner,
                stalled: stalled.clone(),
            },
            stalled,
        )
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stalling<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stalled.load(Ordering::Relaxed) {
            // Never woken: the socket is not read again.
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stalling<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> std::fmt::Debug for Stalling<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stalling")
    }
}

/// Subscribe streams opened one after another by one anonymous caller at the attacker's address,
/// over `connections` connections, until the gateway refuses one and then `more` times past
/// that: the streams it admitted (held open while the result lives) and the refusals.
pub(crate) async fn open_streams_until_refused(
    gateway: SocketAddr,
    topic: &str,
    connections: usize,
    more: usize,
) -> Result<(Vec<HeldStream>, Vec<tonic::Status>), BoxError> {
    use courier_grpc::proto::v1::{self as pb, streams_client::StreamsClient};
    use tokio_stream::wrappers::ReceiverStream;

    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{gateway}"))?
            .local_address(Some(ATTACKER))
            .connect()
            .await?;
        clients.push(StreamsClient::new(channel));
    }
    let (mut held, mut refused) = (Vec::new(), Vec::new());
    // Bounded: a gateway that never refused would be found out at the assertion after.
    for n in 0..4096 {
        if refused.len() > more {
            break;
        }
        let (requests, outbound) = tokio::sync::mpsc::channel(1);
        requests
            .send(pb::SubscribeRequest {
                kind: Some(pb::subscribe_request::Kind::Start(
                    crate::common::start_in_group(topic, &crate::common::unique("hog"), 16),
                )),
            })
            .await?;
        let mut client = clients[n % connections].clone();
        match client.subscribe(ReceiverStream::new(outbound)).await {
            Ok(responses) => held.push((requests, responses.into_inner())),
            Err(status) => refused.push(status),
        }
    }
    Ok((held, refused))
}

/// An open Subscribe stream: its request sender and its responses.
pub(crate) type HeldStream = (
    tokio::sync::mpsc::Sender<courier_grpc::proto::v1::SubscribeRequest>,
    tonic::Streaming<courier_grpc::proto::v1::SubscribeResponse>,
);
