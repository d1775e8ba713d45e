//! Listeners and accept loops: one task per connection, all stopped together on drain.

use std::{net::SocketAddr, sync::Arc};

use courier_gateway::log::Log;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

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
    listener: TcpListener,
    background: CancellationToken,
}

impl Server {
    /// Starts the bridge (topics, session and retained views) and binds the listener.
    pub async fn bind(log: Arc<dyn Log>, config: Config) -> Result<Self> {
        let background = CancellationToken::new();
        let listener = TcpListener::bind(config.listen).await?;
        let bridge = Bridge::start(log, config, background.clone()).await?;
        Ok(Self {
            bridge,
            listener,
            background,
        })
    }

    /// The bound TCP address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Accepts connections until `drain` fires, then tells every client the server is shutting down
    /// (MQTT 5 DISCONNECT 0x8B), lets each finish its appends and commits, and returns.
    pub async fn serve(self, drain: CancellationToken) -> Result<()> {
        let tracker = TaskTracker::new();
        let result = loop {
            let accepted = tokio::select! {
                () = drain.cancelled() => break Ok(()),
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, %peer, "could not set TCP_NODELAY");
                    }
                    tracker.spawn(session::run(
                        self.bridge.clone(),
                        stream,
                        peer,
                        drain.clone(),
                    ));
                }
                // Out of file descriptors and the like: the listener itself is fine; back off briefly.
                Err(error) if is_transient(&error) => {
                    tracing::warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => break Err(Error::Io(error)),
            }
        };
        drop(self.listener);
        tracker.close();
        tracker.wait().await;
        self.background.cancel();
        result
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || error
        .raw_os_error()
        .is_some_and(|code| code == 24 || code == 23)
}
