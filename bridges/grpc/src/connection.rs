//! gRPC connections, plain or over TLS, counted as open while they live, with what a call may want
//! to know of its peer (tonic serves whatever stream type it is given).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use courier_gateway::{
    metrics::{self, ConnectionGuard, Protocol},
    tls::{ClientIdentity, Connection, MaybeTls},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// Who is at the other end of a call's connection: in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub address: Option<SocketAddr>,
    /// The verified TLS client certificate's identity, when the client presented one.
    pub certificate: Option<Arc<ClientIdentity>>,
}

/// An accepted connection and its place in the connection gauge.
#[derive(Debug)]
pub(crate) struct CountedConnection {
    stream: MaybeTls,
    peer: Peer,
    _open: ConnectionGuard,
}

impl CountedConnection {
    /// Counts `connection` as an open gRPC connection until it is dropped.
    pub(crate) fn new(connection: Connection) -> Self {
        Self {
            stream: connection.stream,
            peer: Peer {
                address: Some(connection.peer),
                certificate: connection.certificate.map(Arc::new),
            },
            _open: metrics::connection_opened(Protocol::Grpc),
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
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
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
