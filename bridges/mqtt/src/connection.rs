//! Framed reading and writing of MQTT packets over a byte stream (TCP or a WebSocket adapted to one).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::BytesMut;
use rumqttd::protocol::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::io::poll_read_buf;

use crate::{
    codec::{Codec, Frame, Version},
    error::{Error, Result},
};

/// Initial read buffer: most MQTT packets are small (a CONNECT without a token, a SUBSCRIBE, a
/// PINGREQ); the buffer grows when a large packet comes.
const READ_BUFFER: usize = 256;

/// Most room a read asks for: a client streaming packets (a publisher with a window of messages
/// in flight) fills the room it is given, which doubles each time up to this, so it is read many
/// packets a call rather than one (a large packet grows the buffer further).
const READ_BUFFER_MOST: usize = 16 * 1024;

/// The first read of a connection without a read buffer, on the stack.
const FIRST_READ: usize = 1024;

/// Longest a closing connection waits for the client to close its side.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// A write deadline far enough away to be none.
const NO_DEADLINE: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// One client's byte stream with its codec and buffers.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    codec: Codec,
    /// Empty and without memory while the client sends nothing (see
    /// [`Connection::poll_read_more`]).
    read_buffer: BytesMut,
    /// The room a read asks for: doubled (up to [`READ_BUFFER_MOST`]) each time a read fills it,
    /// and the room the buffer is made with again when the client sends after a wait.
    read_capacity: usize,
    write_buffer: BytesMut,
    /// Longest a write may make no progress before the connection is given up.
    write_timeout: std::time::Duration,
    /// A write timed out: the client is not reading, so nothing more is written (a goodbye or a
    /// TLS close would wait for it again), and the socket is only dropped.
    stuck: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a stream; packets may be up to `max_packet_size` bytes.
    pub fn new(stream: S, max_packet_size: usize) -> Self {
        Self {
            stream,
            codec: Codec::new(max_packet_size),
            read_buffer: BytesMut::new(),
            read_capacity: READ_BUFFER,
            write_buffer: BytesMut::new(),
            write_timeout: NO_DEADLINE,
            stuck: false,
        }
    }

    /// The same connection, whose writes may make no progress for at most `timeout`
    /// (`mqtt.write_timeout`); past it, [`Connection::flush`] fails with
    /// [`Error::WriteTimeout`] and the connection writes nothing more.
    pub fn with_write_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// The version learnt from CONNECT.
    pub fn version(&self) -> Option<Version> {
        self.codec.version()
    }

    /// The next packet; `None` when the peer closed the stream between packets.
    ///
    /// Cancel-safe: bytes read so far stay buffered, so it can be a `select!` branch. A poll
    /// function rather than an `async fn`: the wait is in every idle connection's task, and the
    /// function's state (and its reads') would be 64 bytes of it, not 8.
    pub fn read_frame(&mut self) -> impl Future<Output = Result<Option<Frame>>> + '_ {
        std::future::poll_fn(move |cx| {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.read_buffer)? {
                    return Poll::Ready(Ok(Some(frame)));
                }
                if ready!(self.poll_read_more(cx))? == 0 {
                    if self.read_buffer.is_empty() {
                        return Poll::Ready(Ok(None));
                    }
                    let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return Poll::Ready(Err(eof.into()));
                }
            }
        })
    }

    /// Reads what the client sent into the read buffer; 0 at the end of the stream.
    ///
    /// A connection that waits with nothing buffered lets go of the buffer: most devices are idle
    /// most of the time, and 10,000 of them would each hold its room (256 bytes at least) for
    /// nothing. Without a buffer, the first read goes to the stack, so waiting allocates nothing;
    /// what it brings goes into a buffer made then with the room reads ask for, and the reads after
    /// it go straight into that buffer.
    ///
    /// A read that fills its room doubles the room the next asks for: the decoder reserves only the
    /// rest of a partial packet, and a buffer shared with packets still in use (their payloads are
    /// slices of it) cannot be reclaimed, so without this a client streaming 1 KiB packets was read
    /// one packet (and more than one call) at a time.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let spare = self.read_buffer.capacity() - self.read_buffer.len();
        let short = spare < self.read_capacity / 2;
        if short && self.read_buffer.is_empty() {
            // Nothing kept and little room: a new buffer is made when bytes come, not before a
            // wait that would let it go again.
            self.read_buffer = BytesMut::new();
        }
        if self.read_buffer.capacity() == 0 {
            let mut first = [0u8; FIRST_READ];
            let mut read = ReadBuf::new(&mut first);
            ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
            let read = read.filled();
            if !read.is_empty() {
                self.read_buffer.reserve(self.read_capacity.max(read.len()));
                self.read_buffer.extend_from_slice(read);
                if read.len() == FIRST_READ {
                    self.grow_reads();
                }
            }
            return Poll::Ready(Ok(read.len()));
        }
        // Topped up only while what is kept is small: the rest of a large packet has its room from
        // the decoder already, and room beyond it would copy the packet again.
        if short && self.read_buffer.len() <= self.read_capacity {
            self.read_buffer.reserve(self.read_capacity);
        }
        let room = self.read_buffer.capacity() - self.read_buffer.len();
        let polled = poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read_buffer);
        match polled {
            Poll::Ready(Ok(read)) if read > 0 && read >= room => self.grow_reads(),
            Poll::Pending if self.read_buffer.is_empty() => {
                // A wait halves the room, so a client busy once does not ask for the most forever.
                self.read_capacity = (self.read_capacity / 2).max(READ_BUFFER);
                self.read_buffer = BytesMut::new();
            }
            _ => {}
        }
        polled
    }

    /// The client had more to send than a read took: the next reads ask for twice the room.
    fn grow_reads(&mut self) {
        self.read_capacity = (self.read_capacity * 2).min(READ_BUFFER_MOST);
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

    /// Sends everything queued, each write within the write deadline: a client that stops reading
    /// fills the socket's buffers, and a write then makes no progress; past the deadline the
    /// connection is given up rather than left holding its task and its deliveries. A slow reader
    /// that keeps taking bytes is not cut off, however long a large burst takes it.
    pub async fn flush(&mut self) -> Result<()> {
        if self.stuck {
            return Err(Error::WriteTimeout(self.write_timeout));
        }
        if self.write_buffer.is_empty() {
            return Ok(());
        }
        let mut written = 0;
        while written < self.write_buffer.len() {
            let wrote = tokio::time::timeout(
                self.write_timeout,
                self.stream.write(&self.write_buffer[written..]),
            )
            .await;
            match wrote {
                Ok(Ok(0)) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()),
                Ok(Ok(bytes)) => written += bytes,
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => return Err(self.give_up()),
            }
        }
        self.write_buffer.clear();
        match tokio::time::timeout(self.write_timeout, self.stream.flush()).await {
            Ok(flushed) => Ok(flushed?),
            Err(_) => Err(self.give_up()),
        }
    }

    fn give_up(&mut self) -> Error {
        self.stuck = true;
        Error::WriteTimeout(self.write_timeout)
    }

    /// Sends what is queued and closes the stream's write side (nothing, once a write timed out).
    /// A goodbye waits at most [`LINGER`] for the client to take it: the connection is ending, and
    /// a drain must not wait out a full write deadline per client that stopped reading.
    pub async fn close(&mut self) -> Result<()> {
        if self.stuck {
            return Ok(());
        }
        self.write_timeout = self.write_timeout.min(LINGER);
        self.flush().await?;
        tokio::time::timeout(self.write_timeout, self.stream.shutdown())
            .await
            .map_err(|_| self.give_up())??;
        Ok(())
    }

    /// After [`Connection::close`]: reads what the client still sends until it closes too (at most
    /// `LINGER`). Dropping a socket with unread bytes makes the kernel reset the connection, and a
    /// reset can discard the final DISCONNECT before the client reads it: a client that was still
    /// publishing would see a broken pipe, not the reason.
    pub async fn linger(&mut self) {
        if self.stuck {
            return;
        }
        // Into the read buffer, which is no longer needed: a buffer of its own here would make every
        // connection's task larger, whether it ever lingers or not.
        let drained = tokio::time::timeout(LINGER, async {
            self.read_buffer.reserve(READ_BUFFER);
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;
    use rumqttd::protocol::Packet;

    use super::*;

    /// An MQTT 3.1.1 CONNECT: clean session, keep-alive 60 s, client id `a`.
    const CONNECT: [u8; 15] = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'a',
    ];

    #[tokio::test]
    async fn a_connection_waiting_for_its_client_holds_no_read_buffer() -> Result<()> {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut connection = Connection::new(server, 1024);
        assert!(connection.read_frame().now_or_never().is_none());
        assert_eq!(connection.read_buffer.capacity(), 0);

        client.write_all(&CONNECT).await?;
        let frame = connection.read_frame().await?;
        assert!(matches!(
            frame.map(|frame| frame.packet),
            Some(Packet::Connect(..))
        ));
        assert!(connection.read_frame().now_or_never().is_none());
        assert_eq!(connection.read_buffer.capacity(), 0);

        // Part of a packet is kept while the rest is waited for.
        client.write_all(&[0xC0]).await?;
        assert!(connection.read_frame().now_or_never().is_none());
        assert_eq!(connection.read_buffer.len(), 1);
        client.write_all(&[0x00]).await?;
        let frame = connection.read_frame().await?;
        assert!(matches!(
            frame.map(|frame| frame.packet),
            Some(Packet::PingReq(_))
        ));

        drop(client);
        assert!(connection.read_frame().await?.is_none());
        Ok(())
    }

    /// A stream that counts the reads that brought bytes.
    struct CountedReads<S> {
        stream: S,
        reads: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for CountedReads<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
            if buf.filled().len() > before {
                self.reads += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for CountedReads<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }
    }

    /// A client streaming packets is read many packets a call, not one (or more) calls a packet,
    /// while the packets' payloads are still held (as the log holds them until appended).
    #[tokio::test]
    async fn a_streaming_client_is_read_many_packets_at_a_time()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        const PACKETS: usize = 200;
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let counted = CountedReads {
            stream: server,
            reads: 0,
        };
        let mut connection = Connection::new(counted, 4096);
        client.write_all(&CONNECT).await?;
        // QoS 0 PUBLISHes to `t` with 1,000-byte payloads: 1,003 bytes after the fixed header.
        let mut publish = vec![0x30, 0xEB, 0x07, 0, 1, b't'];
        publish.resize(6 + 1000, b'x');
        for _ in 0..PACKETS {
            client.write_all(&publish).await?;
        }
        let mut held = Vec::new();
        for _ in 0..=PACKETS {
            let frame = connection.read_frame().await?.ok_or("the stream ended")?;
            held.push(frame);
        }
        assert!(matches!(
            held.last().map(|frame| &frame.packet),
            Some(Packet::Publish(..))
        ));
        let reads = connection.stream.reads;
        // 200 KiB in reads of up to 16 KiB: about 20 once the room has grown.
        assert!(reads <= 30, "{PACKETS} packets took {reads} reads");

        // A wait lets the buffer go and halves the room the next one is made with.
        assert!(connection.read_frame().now_or_never().is_none());
        assert_eq!(connection.read_buffer.capacity(), 0);
        assert_eq!(connection.read_capacity, READ_BUFFER_MOST / 2);
        Ok(())
    }

    /// A large packet arriving in pieces is not copied again near its end: the buffer holds about
    /// the packet, not twice it.
    #[tokio::test]
    async fn a_large_packet_in_pieces_is_kept_once()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        const PAYLOAD: usize = 256 * 1024;
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut connection = Connection::new(server, 1 << 20);
        client.write_all(&CONNECT).await?;
        connection.read_frame().await?.ok_or("no CONNECT")?;
        // QoS 0 PUBLISH to `t`: remaining length 3 + PAYLOAD as a varint.
        let remaining = 3 + PAYLOAD;
        let mut publish = vec![
            0x30,
            (remaining & 0x7F) as u8 | 0x80,
            ((remaining >> 7) & 0x7F) as u8 | 0x80,
            (remaining >> 14) as u8,
            0,
            1,
            b't',
        ];
        publish.resize(publish.len() + PAYLOAD, b'x');
        let mut most = 0;
        let mut frame = None;
        for piece in publish.chunks(4096) {
            client.write_all(piece).await?;
            if let Some(read) = connection.read_frame().now_or_never() {
                frame = read?;
            }
            most = most.max(connection.read_buffer.capacity());
        }
        let frame = match frame {
            Some(frame) => frame,
            None => connection.read_frame().await?.ok_or("no PUBLISH")?,
        };
        assert!(matches!(frame.packet, Packet::Publish(..)));
        assert!(
            most < PAYLOAD + 64 * 1024,
            "the buffer grew to {most} bytes"
        );
        Ok(())
    }
}
