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
/// The protocol header of plain AMQP: what follows SASL, or what a client that skips SASL sends
/// first (AMQP 1.0 §2.2).
pub(crate) const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
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

/// The start of a connection on the TLS listener: AMQP's own TLS upgrade when the client asks for it
/// (the TLS protocol header in plain text, answered with the same), else a client that starts the
/// handshake at once, whose first byte (0x16, never the header's `A`) is handed back in front of the
/// stream. The header is read within `wait`; what follows is the TLS handshake's.
pub(crate) async fn start_tls(
    mut stream: TcpStream,
    wait: Duration,
) -> io::Result<Rewound<TcpStream>> {
    let mut head = [0u8; 8];
    let len = tokio::time::timeout(wait, async {
        if stream.read(&mut head[..1]).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if head[0] != TLS_HEADER[0] {
            return Ok(1);
        }
        stream.read_exact(&mut head[1..]).await?;
        if head != TLS_HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "neither a TLS handshake nor AMQP's TLS protocol header",
            ));
        }
        stream.write_all(&TLS_HEADER).await?;
        Ok(0)
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok(Rewound {
        head,
        len,
        given: 0,
        inner: stream,
    })
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
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(&TLS_HEADER).await.unwrap();
        client.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        let mut started = start_tls(server, Duration::from_secs(5)).await.unwrap();
        let mut answer = [0u8; 8];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, TLS_HEADER);
        let mut first = [0u8; 3];
        started.read_exact(&mut first).await.unwrap();
        assert_eq!(
            first,
            [0x16, 0x03, 0x01],
            "the handshake follows the answered header"
        );

        // A TLS record header: the handshake starts at once; the byte read is given back.
        let mut client = TcpStream::connect(address).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        let mut started = start_tls(server, Duration::from_secs(5)).await.unwrap();
        let mut first = [0u8; 3];
        started.read_exact(&mut first).await.unwrap();
        assert_eq!(first, [0x16, 0x03, 0x01]);

        // Something else that starts like the header is refused.
        let mut client = TcpStream::connect(address).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"AMQP\x00\x01\x00\x00").await.unwrap();
        assert!(start_tls(server, Duration::from_secs(5)).await.is_err());
    }
}
