//! What comes before AMQP's frames on a connection: the protocol header that tells a SASL connection
//! from one that skips SASL, and AMQP's own way of asking for TLS on the TLS listener.
//!
//! The header is read, not peeked, so that it works on any stream (a TLS stream cannot be peeked):
//! the bytes read are handed back in front of the stream ([`Rewound`]), and fe2o3's acceptor reads
//! them as if nothing had.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

/// The protocol header of a connection that starts with SASL (AMQP 1.0 §5.3.1).
pub(crate) const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
/// The protocol header of a client that asks for TLS before anything else (AMQP 1.0 §5.2.1).
pub(crate) const TLS_HEADER: [u8; 8] = *b"AMQP\x02\x01\x00\x00";

/// A stream whose first bytes were read already, given back to the next reads before the rest.
#[derive(Debug)]
pub(crate) struct Rewound<S> {
    head: [u8; 8],
    /// How many bytes of `head` were read from the stream.
    len: usize,
    /// How many of them were given back so far.
    given: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.given < this.len {
            let rest = &this.head[this.given..this.len];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.given += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Reads the protocol header and says whether it asks for SASL; the bytes read stay in front of
/// the returned stream. A client that sends fewer than eight bytes within `wait` (or fails, or
/// closes) counts as a SASL one, whose acceptor answers what it did send.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    mut stream: S,
    wait: Duration,
) -> (Rewound<S>, bool) {
    let mut head = [0u8; 8];
    let mut len = 0;
    // Reads are cancel safe: bytes a timed-out read had taken are already counted in `len`.
    let _ = tokio::time::timeout(wait, async {
        while len < head.len() {
            match stream.read(&mut head[len..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => len += n,
            }
        }
    })
    .await;
    let sasl = len < head.len() || head == SASL_HEADER;
    let rewound = Rewound {
        head,
        len,
        given: 0,
        inner: stream,
    };
    (rewound, sasl)
}

/// Whether a client on the TLS listener asks for TLS AMQP's way: the TLS protocol header in plain
/// text before its ClientHello (which starts with byte 0x16, never `A`). Peeks only, so a client
/// that starts the handshake at once loses nothing; `false` when nothing tells within `wait`.
pub(crate) async fn asks_tls_upgrade(stream: &TcpStream, wait: Duration) -> bool {
    let mut head = [0u8; 8];
    let peeked = tokio::time::timeout(wait, async {
        loop {
            match stream.peek(&mut head).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if head[..n] != TLS_HEADER[..n] => return false,
                Ok(n) if n == head.len() => return true,
                // Part of the header so far: peek again once more has arrived.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await;
    peeked.unwrap_or(false)
}

/// Takes the client's TLS protocol header off the stream and answers with the same, as AMQP's TLS
/// upgrade asks: the TLS handshake follows.
pub(crate) async fn accept_tls_upgrade(stream: &mut TcpStream) -> io::Result<()> {
    let mut head = [0u8; 8];
    stream.read_exact(&mut head).await?;
    stream.write_all(&TLS_HEADER).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn read_all<S: AsyncRead + Unpin>(mut stream: S) -> Vec<u8> {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes).await;
        bytes
    }

    #[tokio::test]
    async fn a_sasl_header_is_told_and_given_back_with_what_follows() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"AMQP\x03\x01\x00\x00rest").await.unwrap();
        drop(client);
        let (stream, sasl) = read_header(server, Duration::from_secs(5)).await;
        assert!(sasl);
        assert_eq!(read_all(stream).await, b"AMQP\x03\x01\x00\x00rest");
    }

    #[tokio::test]
    async fn an_amqp_header_skips_sasl() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
        drop(client);
        let (stream, sasl) = read_header(server, Duration::from_secs(5)).await;
        assert!(!sasl);
        assert_eq!(read_all(stream).await, b"AMQP\x00\x01\x00\x00");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_header_goes_to_sasl_and_keeps_its_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"AMQ").await.unwrap();
        let (mut stream, sasl) = read_header(server, Duration::from_secs(5)).await;
        assert!(sasl);
        let mut head = [0u8; 3];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"AMQ");
        // Writes go through to the client.
        stream.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }

    #[tokio::test]
    async fn the_tls_header_is_told_from_a_client_hello_and_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();

        let mut client = TcpStream::connect(address).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(&TLS_HEADER).await.unwrap();
        assert!(asks_tls_upgrade(&server, Duration::from_secs(5)).await);
        accept_tls_upgrade(&mut server).await.unwrap();
        let mut answer = [0u8; 8];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, TLS_HEADER);

        // A TLS record header: the handshake starts at once, nothing consumed.
        let mut client = TcpStream::connect(address).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        assert!(!asks_tls_upgrade(&server, Duration::from_secs(5)).await);
        let mut first = [0u8; 3];
        assert_eq!(server.peek(&mut first).await.unwrap(), 3);
    }
}
