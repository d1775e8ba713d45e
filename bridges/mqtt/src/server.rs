//! Listeners and accept loops: MQTT over TCP and over WebSocket, one task per connection, all stopped
//! together on drain.

use std::{net::SocketAddr, sync::Arc};

use async_tungstenite::tungstenite::{
    handshake::server::{ErrorResponse, Request, Response},
    http::HeaderValue,
};
use courier_gateway::{
    log::Log,
    metrics::{self, Protocol},
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
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
    tcp: TcpListener,
    websocket: Option<TcpListener>,
    background: CancellationToken,
}

/// How a connection arrived.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Tcp,
    WebSocket,
}

impl Server {
    /// Starts the bridge (topics, session and retained views) and binds the listeners.
    pub async fn bind(log: Arc<dyn Log>, config: Config) -> Result<Self> {
        let tcp = TcpListener::bind(config.listen).await?;
        let websocket = match config.websocket_listen {
            Some(address) => Some(TcpListener::bind(address).await?),
            None => None,
        };
        let background = CancellationToken::new();
        let bridge = Bridge::start(log, config, background.clone()).await?;
        Ok(Self {
            bridge,
            tcp,
            websocket,
            background,
        })
    }

    /// The bound TCP address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.tcp.local_addr()?)
    }

    /// The bound WebSocket address, if one is configured.
    pub fn websocket_addr(&self) -> Result<Option<SocketAddr>> {
        Ok(self
            .websocket
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?)
    }

    /// Accepts connections until `drain` fires, then tells every client the server is shutting down
    /// (MQTT 5 DISCONNECT 0x8B), lets each finish its appends and commits, and returns.
    pub async fn serve(self, drain: CancellationToken) -> Result<()> {
        let tracker = TaskTracker::new();
        let result = loop {
            let (accepted, transport) = tokio::select! {
                () = drain.cancelled() => break Ok(()),
                accepted = self.tcp.accept() => (accepted, Transport::Tcp),
                accepted = accept(self.websocket.as_ref()) => (accepted, Transport::WebSocket),
            };
            match accepted {
                Ok((stream, peer)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, %peer, "could not set TCP_NODELAY");
                    }
                    let (bridge, drain) = (self.bridge.clone(), drain.clone());
                    tracker.spawn(async move {
                        let _open = metrics::connection_opened(Protocol::Mqtt);
                        match transport {
                            Transport::Tcp => session::run(bridge, stream, peer, drain).await,
                            // Boxed: a task is as large as its largest state, and the
                            // WebSocket's (handshake, framing) would make every TCP connection's
                            // task ~2 KiB larger, 10,000 devices 30 MiB (jemalloc's size classes).
                            Transport::WebSocket => {
                                Box::pin(serve_websocket(bridge, stream, peer, drain)).await
                            }
                        }
                    });
                }
                // Out of file descriptors and the like: the listener itself is fine; back off briefly.
                Err(error) if is_transient(&error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => break Err(Error::Io(error)),
            }
        };
        drop(self.tcp);
        drop(self.websocket);
        tracker.close();
        tracker.wait().await;
        self.background.cancel();
        result
    }
}

/// Accepts on a listener that may not exist (then never resolves).
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Completes the WebSocket handshake (answering subprotocol `mqtt` when asked), then serves MQTT over
/// the WebSocket's binary messages as a byte stream.
async fn serve_websocket(
    bridge: Arc<Bridge>,
    stream: TcpStream,
    peer: SocketAddr,
    drain: CancellationToken,
) {
    let handshake = tokio::time::timeout(
        bridge.config.connect_timeout,
        async_tungstenite::tokio::accept_hdr_async(stream, choose_mqtt_subprotocol),
    )
    .await;
    match handshake {
        Ok(Ok(websocket)) => session::run(bridge, WsStream::new(websocket), peer, drain).await,
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
