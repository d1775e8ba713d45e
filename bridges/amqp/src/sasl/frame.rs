//! SASL frames on the wire (AMQP 1.0 §5.3.1, §2.3): a four-byte size, then fe2o3's codec for the
//! rest (data offset, frame type, the performative). Read exactly one frame at a time, never
//! beyond it, so that once SASL is done the stream is where the client's AMQP header starts and
//! fe2o3's acceptor can take it from there.

use std::io;

use bytes::BytesMut;
use fe2o3_amqp::frames::sasl::{Frame, FrameCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder as _, Encoder as _};

use crate::nesting::{MAX_NESTING, Scanner};

/// The frame header: size (4), data offset (1), type (1), ignored (2).
const HEADER_LEN: u32 = 8;

/// Writes one SASL frame.
pub(crate) async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    frame: Frame,
) -> io::Result<()> {
    let mut body = BytesMut::new();
    let mut codec = FrameCodec {};
    codec
        .encode(frame, &mut body)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
    let size = u32::try_from(body.len() + 4)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "SASL frame too large"))?;
    let mut bytes = Vec::with_capacity(body.len() + 4);
    bytes.extend_from_slice(&size.to_be_bytes());
    bytes.extend_from_slice(&body);
    stream.write_all(&bytes).await?;
    stream.flush().await
}

/// Reads one SASL frame of at most `max_size` bytes (the size is checked before anything is
/// allocated).
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_size: u32,
) -> io::Result<Frame> {
    let size = stream.read_u32().await?;
    if !(HEADER_LEN..=max_size).contains(&size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a SASL frame of {size} bytes (from {HEADER_LEN} to {max_size} are accepted)"),
        ));
    }
    // `size` fits a u32 and was bounded above, so the buffer is at most `max_size` bytes.
    let mut rest = BytesMut::zeroed((size - 4) as usize);
    stream.read_exact(&mut rest).await?;
    well_formed(&rest)?;
    let mut codec = FrameCodec {};
    match codec.decode(&mut rest) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "an empty SASL frame",
        )),
        Err(error) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a SASL frame: {error}"),
        )),
    }
}

/// Checks the performative after the rest of a frame header (`rest`: data offset, type, two
/// ignored bytes, the body) without decoding it: serde_amqp allocates what a string's or binary's
/// length says before reading it, so a 13-byte frame claiming a 4 GiB string would have the gateway
/// commit 4 GiB before the client is even authenticated; and it recurses once per nesting level.
fn well_formed(rest: &[u8]) -> io::Result<()> {
    let body_at = rest
        .first()
        .map(|&doff| usize::from(doff) * 4)
        .filter(|&at| at >= HEADER_LEN as usize)
        .map(|at| at - 4)
        .filter(|&at| at <= rest.len())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "a SASL frame's data offset is outside it",
            )
        })?;
    Scanner::first_value(&rest[body_at..], MAX_NESTING).map_err(|fault| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a SASL frame that is not well-formed AMQP: {fault:?}"),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::{
        primitives::{Array, Binary, Symbol},
        sasl::{SaslInit, SaslMechanisms},
    };

    use super::*;

    /// A str32 claiming 4 GiB in a 13-byte frame (bridges/amqp/fuzz/artifacts/frames/
    /// repro-sasl-str32-length-commits-4gib) is refused before serde_amqp allocates it.
    #[tokio::test]
    async fn a_value_longer_than_its_frame_is_refused_before_it_is_decoded() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(&[0, 0, 0, 13, 2, 1, 0, 0, 0xb1, 0xff, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        let error = read_frame(&mut server, 512).await.unwrap_err();
        // Refused by the check, not by serde_amqp once it has allocated (it fails too, after).
        assert!(
            error.to_string().contains("not well-formed AMQP"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn frames_round_trip_and_nothing_after_them_is_read() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let init = SaslInit {
            mechanism: Symbol::from("PLAIN"),
            initial_response: Some(Binary::from(b"\0alice\0pw".to_vec())),
            hostname: None,
        };
        write_frame(&mut client, Frame::Init(init)).await.unwrap();
        client.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
        match read_frame(&mut server, 512).await.unwrap() {
            Frame::Init(init) => {
                assert_eq!(init.mechanism.as_str(), "PLAIN");
                assert_eq!(init.initial_response.unwrap().as_ref(), b"\0alice\0pw");
            }
            other => panic!("{other:?}"),
        }
        let mut header = [0u8; 8];
        server.read_exact(&mut header).await.unwrap();
        assert_eq!(&header, b"AMQP\x00\x01\x00\x00");

        let mechanisms = SaslMechanisms {
            sasl_server_mechanisms: Array::from(vec![Symbol::from("EXTERNAL")]),
        };
        write_frame(&mut server, Frame::Mechanisms(mechanisms))
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut client, 512).await.unwrap(),
            Frame::Mechanisms(_)
        ));
    }

    #[tokio::test]
    async fn sizes_out_of_bounds_and_garbage_are_refused() {
        for bytes in [
            &[0u8, 0, 0, 4][..],
            &[0, 0, 0x10, 0],
            &[0, 0, 0, 8, 2, 1, 0, 0],
            &[0, 0, 0, 9, 2, 0, 0, 0, 0x40],
        ] {
            let (mut client, mut server) = tokio::io::duplex(64);
            client.write_all(bytes).await.unwrap();
            drop(client);
            assert!(read_frame(&mut server, 512).await.is_err(), "{bytes:?}");
        }
    }
}
