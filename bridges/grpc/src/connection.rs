//! gRPC connections, plain or over TLS, counted as open while they live, with what a call may want
//! to know of its peer (tonic serves whatever stream type it is given).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use courier_gateway::{
    limits::Permit,
    metrics::{self, ConnectionGuard, Protocol},
    tls::{ClientIdentity, Connection, MaybeTls},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};
use tonic::transport::server::Connected;

/// Who is at the other end of a call's connection: in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub address: Option<SocketAddr>,
    /// The verified TLS client certificate's identity, when the client presented one.
    pub certificate: Option<Arc<ClientIdentity>>,
}

/// HTTP/2's client connection preface, which a client sends first.
const PREFACE_LENGTH: usize = 24;

/// An accepted connection, its place in the connection gauge, and its place under the
/// connection limits (given back when it closes).
///
/// Its first bytes are read under a deadline (`grpc.handshake_timeout`): HTTP/2 has none of its own
/// before the preface, so a client sending a byte every few seconds would otherwise hold the
/// connection forever. Once the preface is in, HTTP/2's keepalive pings take over: a client that
/// stops reading (or answering) is closed after `grpc.keepalive_timeout`.
#[derive(Debug)]
pub(crate) struct CountedConnection {
    stream: MaybeTls,
    peer: Peer,
    /// Bytes of the preface still to come, and when they must have come by.
    preface: Option<(usize, Pin<Box<Sleep>>)>,
    _open: ConnectionGuard,
    _admitted: Option<Permit>,
}

impl CountedConnection {
    /// Counts `connection` as an open gRPC connection until it is dropped; its preface must arrive
    /// within `handshake_timeout`.
    pub(crate) fn new(connection: Connection, handshake_timeout: Duration) -> Self {
        Self {
            stream: connection.stream,
            peer: Peer {
                address: Some(connection.peer),
                certificate: connection.certificate.map(Arc::new),
            },
            preface: Some((
                PREFACE_LENGTH,
                Box::pin(tokio::time::sleep(handshake_timeout)),
            )),
            _open: metrics::connection_opened(Protocol::Grpc),
            _admitted: connection.permit,
        }
    }
}

impl Connected for CountedConnection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for CountedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some((left, deadline)) = &mut this.preface else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        if deadline.as_mut().poll(cx).is_ready() {
            metrics::limit_refused(Protocol::Grpc, "handshake_timeout");
            tracing::debug!(peer = ?this.peer.address, "no HTTP/2 preface within grpc.handshake_timeout");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within grpc.handshake_timeout",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let got = buf.filled().len() - before;
            *left = left.saturating_sub(got);
            if *left == 0 || got == 0 {
                this.preface = None;
            }
        }
        read
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
