//! Listeners and accept loops: MQTT over TCP and over WebSocket, each plain or over TLS, one task
//! per connection (its TLS handshake included, so a slow handshake never holds up the accept loop),
//! all stopped together on drain.

use std::{net::SocketAddr, sync::Arc};

use async_tungstenite::tungstenite::{
    handshake::server::{ErrorResponse, Request, Response},
    http::HeaderValue,
    protocol::WebSocketConfig,
};
use courier_gateway::{
    auth::Access,
    log::Log,
    metrics::{self, Protocol},
    tls::{ClientIdentity, TlsAcceptor, accept_on},
};
use futures_util::{
    FutureExt as _,
    future::{BoxFuture, Either},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};
use ws_stream_tungstenite::WsStream;

use crate::{
    bridge::Bridge,
    config::Config,
    error::{Error, Result},
    session,
};

/// The MQTT endpoint: bound listeners over a started [`Bridge`].
#[derive(Debug)]
pub struct Server {
    bridge: Arc<Bridge>,
    tcp: Option<TcpListener>,
    websocket: Option<TcpListener>,
    tls_tcp: Option<TcpListener>,
    tls_websocket: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
    /// Stops the bridge's background readers and the certificates' reloader when the server goes,
    /// served or not.
    background: DropGuard,
}

/// How a connection arrived.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Tcp,
    WebSocket,
}

async fn bind(address: Option<SocketAddr>) -> Result<Option<TcpListener>> {
    Ok(match address {
        Some(address) => Some(TcpListener::bind(address).await?),
        None => None,
    })
}

impl Server {
    /// Starts the bridge (topics, session and retained views), loads the TLS certificates when
    /// `[mqtt.tls]` is set, and binds the listeners. `access` authenticates MQTT clients and
    /// authorizes what they do.
    pub async fn bind(log: Arc<dyn Log>, config: Config, access: Access) -> Result<Self> {
        config.validate().map_err(Error::Config)?;
        let background = CancellationToken::new();
        // Armed first: a bind or start that fails below stops what was started before it.
        let guard = background.clone().drop_guard();
        let tls = match &config.tls {
            Some(tls) => Some(TlsAcceptor::start("mqtt", tls, &[], background.clone())?),
            None => None,
        };
        let plain = bind(Some(config.listen)).await?;
        let plain_websocket = bind(config.websocket_listen).await?;
        // With no TLS address of its own, the TLS table turns the plain addresses to TLS.
        let (tcp, websocket, tls_tcp, tls_websocket) = match &config.tls {
            Some(settings) if settings.replaces_plain() => (None, None, plain, plain_websocket),
            Some(settings) => (
                plain,
                plain_websocket,
                bind(settings.listen).await?,
                bind(settings.websocket_listen).await?,
            ),
            None => (plain, plain_websocket, None, None),
        };
        let bridge = Bridge::start(log, config, access, background.clone()).await?;
        Ok(Self {
            bridge,
            tcp,
            websocket,
            tls_tcp,
            tls_websocket,
            tls,
            background: guard,
        })
    }

    /// The address of MQTT over TCP: the plain listener's, or the TLS one's when TLS replaced it.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        let listener = self.tcp.as_ref().or(self.tls_tcp.as_ref());
        match listener {
            Some(listener) => Ok(listener.local_addr()?),
            None => Err(Error::Config("no MQTT TCP listener".into())),
        }
    }

    /// The bound addresses by what they serve: `mqtt` (TCP), `mqtt-ws` (WebSocket), `mqtts` (TCP
    /// over TLS), `mqtt-wss` (WebSocket over TLS).
    pub fn addresses(&self) -> Result<Vec<(&'static str, SocketAddr)>> {
        let mut addresses = Vec::new();
        for (name, listener) in [
            ("mqtt", &self.tcp),
            ("mqtt-ws", &self.websocket),
            ("mqtts", &self.tls_tcp),
            ("mqtt-wss", &self.tls_websocket),
        ] {
            if let Some(listener) = listener {
                addresses.push((name, listener.local_addr()?));
            }
        }
        Ok(addresses)
    }

    /// Accepts connections until `drain` fires, then tells every client the server is shutting down
    /// (MQTT 5 DISCONNECT 0x8B), lets each finish its appends and commits, and returns.
    ///
    /// Each connection is admitted by its listener's gate (`[limits]`) first. A refused one on
    /// plain TCP is answered in MQTT (CONNACK 0x97 or 0x9F) by a task of its own, at most
    /// [`REFUSING_AT_ONCE`] at a time; past that, and on TLS and WebSocket listeners (where the
    /// answer would cost a handshake, which is what a flood wants spent), it is closed at once.
    pub async fn serve(self, drain: CancellationToken) -> Result<()> {
        let tracker = TaskTracker::new();
        let limits = &self.bridge.access.limits.connections;
        let gates = [
            limits.gate(Protocol::Mqtt, "mqtt"),
            limits.gate(Protocol::Mqtt, "mqtt-ws"),
            limits.gate(Protocol::Mqtt, "mqtts"),
            limits.gate(Protocol::Mqtt, "mqtt-wss"),
        ];
        let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
        let result = loop {
            let (accepted, transport, tls, gate) = tokio::select! {
                () = drain.cancelled() => break Ok(()),
                accepted = accept_on(self.tcp.as_ref()) => (accepted, Transport::Tcp, None, &gates[0]),
                accepted = accept_on(self.websocket.as_ref()) => (accepted, Transport::WebSocket, None, &gates[1]),
                accepted = accept_on(self.tls_tcp.as_ref()) => (accepted, Transport::Tcp, self.tls.clone(), &gates[2]),
                accepted = accept_on(self.tls_websocket.as_ref()) => (accepted, Transport::WebSocket, self.tls.clone(), &gates[3]),
            };
            match accepted {
                Ok((stream, peer)) => {
                    let permit = match gate.admit(peer) {
                        Ok(permit) => permit,
                        Err(refusal) => {
                            let answerable = tls.is_none() && matches!(transport, Transport::Tcp);
                            if let (true, Ok(turn)) =
                                (answerable, refusing.clone().try_acquire_owned())
                            {
                                let bridge = self.bridge.clone();
                                tracker.spawn(async move {
                                    session::turn_away(bridge, stream, peer, refusal).await;
                                    drop(turn);
                                });
                            }
                            continue;
                        }
                    };
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, %peer, "could not set TCP_NODELAY");
                    }
                    let bridge = self.bridge.clone();
                    // Held for as long as the connection is served; the gauge goes first, so it
                    // never counts more connections than the permits allow.
                    let held = (metrics::connection_opened(Protocol::Mqtt), permit);
                    // A task is as large as its largest state, for as long as the connection
                    // lasts: the session's future is the task's (an `async` block around it would
                    // keep a second copy of everything it moves into it), and the WebSocket's
                    // (handshake, framing) or TLS's is boxed, or every plain TCP connection's task
                    // would be as large, 10,000 devices tens of MiB (jemalloc's size classes).
                    let serving = match (tls, transport) {
                        (None, Transport::Tcp) => {
                            Either::Left(session::run(bridge, stream, peer, None))
                        }
                        (None, Transport::WebSocket) => {
                            Either::Right(Box::pin(serve_websocket(bridge, stream, peer, None))
                                as BoxFuture<'static, ()>)
                        }
                        (Some(tls), transport) => {
                            Either::Right(Box::pin(serve_tls(bridge, tls, stream, peer, transport))
                                as BoxFuture<'static, ()>)
                        }
                    };
                    tracker.spawn(serving.map(move |()| drop(held)));
                }
                // Out of file descriptors and the like: the listener itself is fine; back off briefly.
                Err(error) if is_transient(&error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => break Err(Error::Io(error)),
            }
        };
        drop((self.tcp, self.websocket, self.tls_tcp, self.tls_websocket));
        tracker.close();
        // The connections learn of the drain through the takeover fence, whose signal each waits
        // for anyway (a cancellation token's wait would be more of every idle connection's task).
        // A listener that failed leaves them be until the drain, as before.
        tokio::select! {
            () = tracker.wait() => {}
            () = drain.cancelled() => {
                self.bridge.takeover.shut_down();
                tracker.wait().await;
            }
        }
        drop(self.background);
        result
    }
}

/// Refused connections answered in MQTT at once (each for at most `mqtt.connect_timeout`).
const REFUSING_AT_ONCE: usize = 64;

/// Completes the TLS handshake (refusals are logged and counted by the acceptor), then serves MQTT
/// or MQTT over WebSocket on the TLS stream, with the client certificate's identity, if any.
///
/// The handshake and the WebSocket are boxed: a future is as large as its largest state, and
/// either would make every TLS connection's future as large for as long as it lasts.
async fn serve_tls(
    bridge: Arc<Bridge>,
    tls: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
) {
    let Some((stream, identity)) = Box::pin(tls.accept(stream, peer)).await else {
        return;
    };
    let identity = identity.map(Box::new);
    match transport {
        Transport::Tcp => session::run(bridge, stream, peer, identity).await,
        Transport::WebSocket => {
            Box::pin(serve_websocket(bridge, stream, peer, identity)).await;
        }
    }
}

/// Completes the WebSocket handshake (answering subprotocol `mqtt` when asked), then serves MQTT over
/// the WebSocket's binary messages as a byte stream.
async fn serve_websocket<S: AsyncRead + AsyncWrite + Unpin + Send>(
    bridge: Arc<Bridge>,
    stream: S,
    peer: SocketAddr,
    identity: Option<Box<ClientIdentity>>,
) {
    // A WebSocket message carries MQTT bytes: none needs to be larger than an MQTT packet may be
    // (tungstenite's default would buffer 64 MiB for a client that never finishes a message).
    let max_message = bridge.config.max_packet_size as usize;
    let websocket_limits = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    // Boxed, as the TLS handshake is (see `serve_tls`).
    let handshake = Box::pin(tokio::time::timeout(
        bridge.config.connect_timeout,
        async_tungstenite::tokio::accept_hdr_async_with_config(
            stream,
            choose_mqtt_subprotocol,
            Some(websocket_limits),
        ),
    ))
    .await;
    match handshake {
        Ok(Ok(websocket)) => {
            session::run(bridge, WsStream::new(websocket), peer, identity).await;
        }
        Ok(Err(error)) => tracing::info!(%peer, %error, "WebSocket handshake failed"),
        Err(_) => tracing::info!(%peer, "WebSocket handshake timed out"),
    }
}

/// The handshake callback: answers subprotocol `mqtt` when the client offers it (browsers' MQTT
/// clients insist on it). The signature is tungstenite's; its large error type is not ours to shrink.
#[allow(clippy::result_large_err)]
fn choose_mqtt_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let asks_mqtt = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|protocol| protocol.trim() == "mqtt");
    if asks_mqtt {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    }
    Ok(response)
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    // EMFILE and ENFILE: out of file descriptors, which frees up as connections close.
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || error
        .raw_os_error()
        .is_some_and(|code| code == 24 || code == 23)
}

#[cfg(test)]
mod tests {
    use courier_gateway::tls::TlsStream;

    use super::*;

    /// The size of the future `serve_tls` returns, without calling it.
    fn serving_size<A, B, C, D, E, R>(_: impl Fn(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// The size of the future `session::run` returns, without calling it.
    fn session_size<A, B, C, D, R>(_: impl Fn(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A TLS connection's task is its session's and little more: the TLS and WebSocket handshakes
    /// and the WebSocket session are boxed. (Unboxed, the WebSocket's future made every TLS
    /// connection's about 5 KiB.)
    #[test]
    fn a_tls_connections_future_is_little_more_than_its_sessions() {
        let serving = serving_size(serve_tls);
        let session = session_size(session::run::<TlsStream<TcpStream>>);
        eprintln!("serve_tls: {serving} bytes, its session {session}");
        assert!(serving <= session + 256, "{serving} bytes");
    }
}
