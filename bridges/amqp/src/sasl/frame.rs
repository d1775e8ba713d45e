//! SASL frames on the wire (AMQP 1.0 §5.3.1, §2.3): a four-byte size, then fe2o3's codec for the
//! rest (data offset, frame type, the performative). Read exactly one frame at a time, never
//! beyond it, so that once SASL is done the stream is where the client's AMQP header starts and
//! fe2o3's acceptor can take it from there.

use std::io;

use bytes::BytesMut;
use fe2o3_amqp::frames::sasl::{Frame, FrameCodec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder as _, Encoder as _};

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

#[cfg(test)]
mod tests {
    use fe2o3_amqp::types::{
        primitives::{Array, Binary, Symbol},
        sasl::{SaslInit, SaslMechanisms},
    };

    use super::*;

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
