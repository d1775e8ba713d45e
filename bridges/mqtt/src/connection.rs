//! Framed reading and writing of MQTT packets over a byte stream (TCP or a WebSocket adapted to one).

use bytes::BytesMut;
use rumqttd::protocol::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    codec::{Codec, Frame, Version},
    error::Result,
};

/// Initial buffers: most MQTT packets are small, and an idle device should cost little (the buffers
/// grow when a large packet comes).
const READ_BUFFER: usize = 1024;

/// Longest a closing connection waits for the client to close its side.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// One client's byte stream with its codec and buffers.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    codec: Codec,
    read_buffer: BytesMut,
    write_buffer: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a stream; packets may be up to `max_packet_size` bytes.
    pub fn new(stream: S, max_packet_size: usize) -> Self {
        Self {
            stream,
            codec: Codec::new(max_packet_size),
            read_buffer: BytesMut::with_capacity(READ_BUFFER),
            write_buffer: BytesMut::new(),
        }
    }

    /// The version learnt from CONNECT.
    pub fn version(&self) -> Option<Version> {
        self.codec.version()
    }

    /// The next packet; `None` when the peer closed the stream between packets.
    ///
    /// Cancel-safe: bytes read so far stay buffered, so it can be a `select!` branch.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.read_buffer)? {
                return Ok(Some(frame));
            }
            if self.stream.read_buf(&mut self.read_buffer).await? == 0 {
                if self.read_buffer.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    /// The next packet among the bytes already read, without reading more.
    pub fn decode_buffered(&mut self) -> Result<Option<Frame>> {
        self.codec.decode(&mut self.read_buffer)
    }

    /// Encodes a packet into the write buffer; [`Connection::flush`] sends it.
    pub fn queue(&mut self, packet: Packet) -> Result<()> {
        self.codec.encode(packet, &mut self.write_buffer)
    }

    /// Encodes a packet into the write buffer unless it comes to more than `limit` bytes (a client's
    /// Maximum Packet Size, which counts the whole packet); `false` when it was left out.
    pub fn queue_within(&mut self, packet: Packet, limit: Option<u32>) -> Result<bool> {
        let start = self.write_buffer.len();
        self.codec.encode(packet, &mut self.write_buffer)?;
        let size = self.write_buffer.len() - start;
        if limit.is_some_and(|limit| size > limit as usize) {
            self.write_buffer.truncate(start);
            return Ok(false);
        }
        Ok(true)
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.write_buffer.is_empty() {
            self.stream.write_all(&self.write_buffer).await?;
            self.write_buffer.clear();
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// Sends what is queued and closes the stream's write side.
    pub async fn close(&mut self) -> Result<()> {
        self.flush().await?;
        self.stream.shutdown().await?;
        Ok(())
    }

    /// After [`Connection::close`]: reads what the client still sends until it closes too (at most
    /// `LINGER`). Dropping a socket with unread bytes makes the kernel reset the connection, and a
    /// reset can discard the final DISCONNECT before the client reads it: a client that was still
    /// publishing would see a broken pipe, not the reason.
    pub async fn linger(&mut self) {
        // Into the read buffer, which is no longer needed: a buffer of its own here would make every
        // connection's task larger, whether it ever lingers or not.
        let drained = tokio::time::timeout(LINGER, async {
            loop {
                self.read_buffer.clear();
                if !matches!(self.stream.read_buf(&mut self.read_buffer).await, Ok(read) if read > 0)
                {
                    break;
                }
            }
        });
        let _ = drained.await;
    }
}
