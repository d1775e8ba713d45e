//! One bad client never holds up the others, and nothing acknowledged is lost, with a gateway served
//! in process: a handshake dribbled a byte at a time is cut off at `amqp.handshake_timeout` (plain
//! and over TLS); a receiver that stops reading its socket is cut off at `amqp.write_timeout`, and
//! every record it held goes to the next member of its group; a record released or modified
//! `amqp.max_delivery_count` times is dead-lettered.

mod support;

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use courier_amqp::Config;
use courier_gateway::{log::TopicSpec, tls::TlsConfig};
use courier_testkit::certs::TestPki;
use fe2o3_amqp::{
    Connection, Receiver, Sender, Session,
    link::receiver::CreditMode,
    types::{
        messaging::{Body, Message, Modified},
        primitives::{Binary, Value},
    },
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use support::*;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpSocket, TcpStream},
};

/// A client's SASL header, then the start of a sasl-init frame that announces 1 KiB: written a
/// byte at a time, it keeps the gateway waiting for the rest of the frame.
fn dribbled_handshake() -> Vec<u8> {
    let mut bytes = b"AMQP\x03\x01\x00\x00".to_vec();
    bytes.extend_from_slice(&1024u32.to_be_bytes());
    bytes.extend(std::iter::repeat_n(0x40, 60));
    bytes
}

/// Writes `bytes` a byte every 300 ms until the gateway closes the connection (it hangs up or a
/// write fails); an error if it is still open after `WAIT`.
async fn dribble_until_closed<S: AsyncRead + AsyncWrite>(stream: S, bytes: &[u8]) -> TestResult {
    let (mut read, mut write) = tokio::io::split(stream);
    let hung_up = async {
        let mut buf = [0u8; 1024];
        while let Ok(1..) = read.read(&mut buf).await {}
    };
    let dribble = async {
        for byte in bytes {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Sent it all: the gateway now waits for what never comes.
        std::future::pending::<()>().await;
    };
    tokio::time::timeout(WAIT, async {
        tokio::select! {
            () = hung_up => {}
            () = dribble => {}
        }
    })
    .await
    .map_err(|_| "the dribbling client was never cut off".into())
}

fn tls_client(ca: &std::path::Path) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(ca)? {
        roots.add(certificate?)?;
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_handshake_is_cut_off_at_the_deadline() -> TestResult {
    let gateway = Gateway::start(Config {
        handshake_timeout: Duration::from_secs(1),
        ..Config::default()
    })
    .await?;
    let slow = TcpStream::connect(gateway.address).await?;
    let handshake = dribbled_handshake();
    let dribbling = dribble_until_closed(slow, &handshake);
    let (cut_off, good) = tokio::join!(dribbling, a_good_client_works(&gateway, "meanwhile", 3));
    cut_off?;
    good?;
    gateway.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_covers_tls_and_the_amqp_handshake_after_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut pki = TestPki::new(dir.path(), "amqp")?;
    let server = pki.server("server", &["localhost"])?;
    // TLS's own bound is long; the handshake deadline cuts off a client that does TLS at once and
    // then dribbles AMQP.
    let mut tls = TlsConfig::new(&server.cert, &server.key);
    tls.handshake_timeout = Duration::from_secs(60);
    let gateway = Gateway::start(Config {
        handshake_timeout: Duration::from_secs(2),
        tls: Some(tls),
        ..Config::default()
    })
    .await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client(pki.ca())?));
    let tcp = TcpStream::connect(gateway.address).await?;
    let stream = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    dribble_until_closed(stream, &dribbled_handshake()).await?;
    gateway.stop().await
}

/// A socket whose reads can be stopped, as a client that stops reading would; its receive buffer
/// is small, so the gateway's writes fill it soon.
#[derive(Debug)]
struct Stalling {
    inner: TcpStream,
    stalled: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
}

/// Stops and resumes a [`Stalling`] socket's reads.
#[derive(Clone)]
struct Stall {
    stalled: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl Stall {
    fn set(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
        if let Some(waker) = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            waker.wake();
        }
    }
}

async fn stalling(address: std::net::SocketAddr) -> Result<(Stalling, Stall), Error> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(64 * 1024)?;
    let inner = socket.connect(address).await?;
    let stall = Stall {
        stalled: Arc::new(AtomicBool::new(false)),
        waker: Arc::new(Mutex::new(None)),
    };
    let stalling = Stalling {
        inner,
        stalled: stall.stalled.clone(),
        waker: stall.waker.clone(),
    };
    Ok((stalling, stall))
}

impl AsyncRead for Stalling {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.stalled.load(Ordering::SeqCst) {
            *this.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            // Set again after the waker is stored, so a resume in between is not missed.
            if this.stalled.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stalling {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Bulk messages' bodies: 64 KiB each, named by their number.
fn bulk(i: usize) -> Vec<u8> {
    named::body("bulk", i, 64 * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_reading_is_cut_off_and_its_group_gets_every_record() -> TestResult {
    const EARLY: usize = 3;
    const BULK: usize = 300;
    let gateway = Gateway::start(Config {
        write_timeout: Duration::from_secs(2),
        // Only the write deadline can end the stalled connection here.
        idle_timeout: Duration::from_secs(600),
        ..Config::default()
    })
    .await?;
    gateway
        .log
        .create_topic(TopicSpec {
            partitions: Some(2),
            ..TopicSpec::named("stalled")
        })
        .await?;

    // The stalled receiver gets the first records (holding them unsettled), then reads no more.
    let (stream, stall) = stalling(gateway.address).await?;
    let mut stalled = Connection::builder()
        .container_id("stalled")
        .open_with_stream(stream)
        .await?;
    let mut stalled_session = Session::begin(&mut stalled).await?;
    let mut stalled_receiver = Receiver::builder()
        .name("stalled-receiver")
        .source("stalled/groups/g")
        .credit_mode(CreditMode::Auto(BULK as u32 + 100))
        .attach(&mut stalled_session)
        .await?;
    let mut producer = gateway.connect("producer").await?;
    let mut producer_session = Session::begin(&mut producer).await?;
    let mut sender = Sender::attach(&mut producer_session, "bulk-sender", "stalled").await?;
    for i in 0..EARLY {
        let outcome = sender.send(Message::from(Binary::from(bulk(i)))).await?;
        assert!(outcome.is_accepted(), "{outcome:?}");
    }
    for _ in 0..EARLY {
        tokio::time::timeout(WAIT, stalled_receiver.recv::<Body<Value>>()).await??;
    }
    stall.set(true);

    // Enough to fill the socket's buffers many times over, then the next member of the group.
    let producing = async {
        for i in EARLY..EARLY + BULK {
            let outcome = sender.send(Message::from(Binary::from(bulk(i)))).await?;
            assert!(outcome.is_accepted(), "{outcome:?}");
        }
        Ok::<_, Error>(())
    };
    let mut session = {
        let mut next = gateway.connect("next").await?;
        let session = Session::begin(&mut next).await?;
        (next, session)
    };
    let mut next_receiver =
        Receiver::attach(&mut session.1, "next-receiver", "stalled/groups/g").await?;
    let receiving =
        named::receive_names(&mut next_receiver, EARLY + BULK, Duration::from_secs(120));
    // Meanwhile a sender and receiver on a connection of their own carry on.
    let (produced, seen, good) = tokio::join!(
        producing,
        receiving,
        a_good_client_works(&gateway, "unaffected", 5)
    );
    produced?;
    good?;
    let seen = seen?;
    for i in 0..EARLY + BULK {
        assert!(
            seen.contains(&format!("bulk-{i:04}")),
            "bulk-{i:04} never came"
        );
    }

    // The stalled client's connection is gone: once it reads again, it finds it closed.
    stall.set(false);
    let gone = tokio::time::timeout(WAIT, async {
        loop {
            if stalled_receiver.recv::<Body<Value>>().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "the stalled connection is still open");
    let _ = stalled.close().await;

    sender.close().await?;
    producer_session.end().await?;
    producer.close().await?;
    next_receiver.close().await?;
    session.1.end().await?;
    session.0.close().await?;
    gateway.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_released_or_modified_max_delivery_count_times_is_dead_lettered() -> TestResult {
    let gateway = Gateway::start(Config {
        max_delivery_count: 3,
        ..Config::default()
    })
    .await?;
    gateway
        .log
        .create_topic(TopicSpec {
            partitions: Some(1),
            ..TopicSpec::named("bounced")
        })
        .await?;
    let mut connection = gateway.connect("bouncer").await?;
    let mut session = Session::begin(&mut connection).await?;
    let mut sender = Sender::attach(&mut session, "bounce-sender", "bounced").await?;
    for body in ["release-me", "modify-me", "accept-me"] {
        assert!(sender.send(body).await?.is_accepted());
    }
    let mut receiver = Receiver::attach(&mut session, "bouncer", "bounced/groups/g").await?;
    let mut counts: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    let total = |counts: &std::collections::BTreeMap<String, Vec<u32>>| {
        counts.values().map(Vec::len).sum::<usize>()
    };
    while total(&counts) < 7 {
        let delivery = tokio::time::timeout(WAIT, receiver.recv::<String>()).await??;
        let count = delivery
            .message()
            .header
            .as_ref()
            .map_or(0, |header| header.delivery_count);
        counts
            .entry(delivery.body().clone())
            .or_default()
            .push(count);
        match delivery.body().as_str() {
            "release-me" => receiver.release(&delivery).await?,
            "modify-me" => {
                let failed = Modified {
                    delivery_failed: Some(true),
                    undeliverable_here: None,
                    message_annotations: None,
                };
                receiver.modify(&delivery, failed).await?
            }
            _ => receiver.accept(&delivery).await?,
        }
    }
    // Released: delivered again, not counted as failed in the header; modified with
    // delivery-failed: counted. Either way, three deliveries and no more.
    assert_eq!(counts["release-me"], vec![0, 0, 0]);
    assert_eq!(counts["modify-me"], vec![0, 1, 2]);
    assert_eq!(counts["accept-me"], vec![0]);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), receiver.recv::<String>())
            .await
            .is_err(),
        "delivered a fourth time"
    );

    let letters = gateway.records("bounced.dlq").await?;
    let mut bounced: Vec<(String, String)> = letters
        .iter()
        .map(|record| {
            let header = |name: &str| {
                record
                    .headers
                    .iter()
                    .find(|header| header.key == name)
                    .map(|header| String::from_utf8_lossy(&header.value).into_owned())
                    .unwrap_or_default()
            };
            (header("dlq-offset"), header("dlq-condition"))
        })
        .collect();
    bounced.sort();
    assert_eq!(
        bounced,
        vec![
            ("0".to_owned(), "courier:delivery-limit-exceeded".to_owned()),
            ("1".to_owned(), "courier:delivery-limit-exceeded".to_owned()),
        ]
    );
    receiver.close().await?;

    // All three were acknowledged: the group's next member gets none of them.
    let mut again = Receiver::attach(&mut session, "again", "bounced/groups/g").await?;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), again.recv::<String>())
            .await
            .is_err(),
        "an acknowledged record came back"
    );
    again.close().await?;
    sender.close().await?;
    session.end().await?;
    connection.close().await?;
    gateway.stop().await
}
