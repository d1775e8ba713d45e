//! The guard between an in-memory client and the test standing in for fe2o3: good frames pass as
//! they were sent, a bad one is answered with OPEN (if none went out) and CLOSE, and fe2o3's read
//! fails once the client has had its chance to read them.

use fe2o3_amqp::types::{
    definitions::{AmqpError, ConnectionError, ErrorCondition},
    performatives::{Close, Performative},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::*;
use crate::{nesting::MAX_NESTING, transport::AMQP_HEADER};

fn limits() -> Limits {
    Limits {
        max_frame_size: 4096,
        channel_max: 0,
        handle_max: 0,
        nesting: MAX_NESTING,
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5672))
}

/// The client's end, and the guarded server end.
fn connected() -> (DuplexStream, FrameGuard<DuplexStream>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    (client, FrameGuard::new(server, limits(), peer()))
}

fn open_frame() -> Vec<u8> {
    wire::open("client", 4096, 0)
}

/// Reads one frame off `stream`: its performative.
async fn read_performative(stream: &mut DuplexStream) -> Performative {
    let size = stream.read_u32().await.expect("a frame") as usize;
    let mut rest = vec![0; size - 4];
    stream.read_exact(&mut rest).await.expect("the frame");
    serde_amqp::from_slice(&rest[4..]).expect("a performative")
}

/// The CLOSE's condition and description.
async fn read_close(stream: &mut DuplexStream) -> (ErrorCondition, String) {
    match read_performative(stream).await {
        Performative::Close(Close { error: Some(error) }) => {
            (error.condition, error.description.unwrap_or_default())
        }
        other => panic!("expected CLOSE with an error, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_header_and_good_frames_pass_as_they_were_sent() {
    let (mut client, mut guard) = connected();
    let sent = [&AMQP_HEADER[..], &open_frame(), &[0, 0, 0, 8, 2, 0, 0, 0]].concat();
    client.write_all(&sent).await.unwrap();
    let mut received = vec![0; sent.len()];
    guard.read_exact(&mut received).await.unwrap();
    assert_eq!(received, sent);
    // What fe2o3 writes goes out as it is.
    guard.write_all(b"AMQP\0\x01\0\0").await.unwrap();
    let mut header = [0; 8];
    client.read_exact(&mut header).await.unwrap();
    assert_eq!(header, AMQP_HEADER);
}

#[tokio::test(start_paused = true)]
async fn a_bad_first_frame_gets_open_and_close_and_fe2o3_nothing_of_it() {
    let (mut client, mut guard) = connected();
    // fe2o3 has sent only its protocol header.
    guard.write_all(&AMQP_HEADER).await.unwrap();
    client.write_all(&AMQP_HEADER).await.unwrap();
    client.write_all(&[0xff; 64]).await.unwrap();
    let mut header = [0; 8];
    guard.read_exact(&mut header).await.unwrap();
    let mut fe2o3 = tokio::spawn(async move {
        let mut rest = Vec::new();
        let outcome = guard.read_to_end(&mut rest).await;
        (rest, outcome)
    });

    client.read_exact(&mut header).await.unwrap();
    assert!(matches!(
        read_performative(&mut client).await,
        Performative::Open(_)
    ));
    let (condition, description) = read_close(&mut client).await;
    assert_eq!(condition, ConnectionError::FramingError.into());
    assert!(description.contains("4294967295 bytes"), "{description}");
    // Then the gateway's side is shut: nothing follows CLOSE.
    let mut after = Vec::new();
    client.read_to_end(&mut after).await.unwrap();
    assert!(after.is_empty());

    // fe2o3 got none of the bad frame, and its read fails once the client hangs up.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut fe2o3)
            .await
            .is_err()
    );
    drop(client);
    let (rest, outcome) = fe2o3.await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::InvalidData);
}

#[tokio::test(start_paused = true)]
async fn a_bad_later_frame_gets_close_only_and_what_fe2o3_writes_after_it_is_dropped() {
    let (mut client, mut guard) = connected();
    guard.write_all(&AMQP_HEADER).await.unwrap();
    guard.write_all(&open_frame()).await.unwrap();
    client
        .write_all(&[&AMQP_HEADER[..], &open_frame()].concat())
        .await
        .unwrap();
    // A BEGIN on channel 1, past the channel-max of 0.
    let begin = [0x00, 0x53, 0x11, 0xc0, 0x04, 0x03, 0x40, 0x43, 0x43];
    let mut frame = ((8 + begin.len()) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[2, 0, 0, 1]);
    frame.extend_from_slice(&begin);
    client.write_all(&frame).await.unwrap();

    let mut passed = vec![0; 8 + open_frame().len()];
    guard.read_exact(&mut passed).await.unwrap();
    let fe2o3 = tokio::spawn(async move {
        let error = guard.read_u8().await.unwrap_err();
        // Swallowed: the connection is over.
        guard.write_all(b"a frame after CLOSE").await.unwrap();
        error
    });

    let mut header = [0; 8];
    client.read_exact(&mut header).await.unwrap();
    assert!(matches!(
        read_performative(&mut client).await,
        Performative::Open(_)
    ));
    let (condition, description) = read_close(&mut client).await;
    assert_eq!(condition, ConnectionError::FramingError.into());
    assert!(description.contains("channel 1"), "{description}");
    // The client never hangs up: the linger ends it.
    let started = tokio::time::Instant::now();
    let error = fe2o3.await.unwrap();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(started.elapsed() <= CLOSE_LINGER);
    let mut after = Vec::new();
    client.read_to_end(&mut after).await.unwrap();
    assert!(after.is_empty(), "nothing after CLOSE: {after:?}");
}

#[tokio::test(start_paused = true)]
async fn garbage_where_a_frame_should_be_is_a_decode_error() {
    let (mut client, mut guard) = connected();
    guard.write_all(&AMQP_HEADER).await.unwrap();
    client.write_all(&AMQP_HEADER).await.unwrap();
    let mut garbage = vec![0, 0, 0, 40, 2, 0, 0, 0];
    garbage.extend_from_slice(&[0x01; 32]);
    client.write_all(&garbage).await.unwrap();
    let mut header = [0; 8];
    guard.read_exact(&mut header).await.unwrap();
    tokio::spawn(async move { guard.read_u8().await });
    client.read_exact(&mut header).await.unwrap();
    assert!(matches!(
        read_performative(&mut client).await,
        Performative::Open(_)
    ));
    let (condition, _) = read_close(&mut client).await;
    assert_eq!(condition, AmqpError::DecodeError.into());
}
