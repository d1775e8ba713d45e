//! Why a long-lived stream (ProduceStream, Subscribe) ends while its client would go on: the gateway
//! drains, or the token the stream was opened with expires. Credentials are checked when a call
//! starts; a stream outliving its token would keep rights the identity provider has stopped
//! vouching for, so it ends at the token's `exp` (with the leeway) and the client opens a new one
//! with a fresh token, as Kafka's re-authentication (KIP-368) and EMQX do for their connections.

use courier_gateway::auth::Principal;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// What ends a stream from the gateway's side.
#[derive(Debug, Clone)]
pub(crate) struct StreamEnds {
    drain: CancellationToken,
    expires: Option<Instant>,
}

/// Which of them came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cutoff {
    /// The gateway is draining.
    Drain,
    /// The caller's token expired.
    Expired,
}

impl StreamEnds {
    /// The ends of a stream `principal` opens while the gateway may drain by `drain`.
    pub(crate) fn new(drain: CancellationToken, principal: &Principal) -> Self {
        Self {
            drain,
            expires: principal.remaining().map(|left| Instant::now() + left),
        }
    }

    /// Waits for the first of them.
    pub(crate) async fn reached(&self) -> Cutoff {
        match self.expires {
            Some(at) => tokio::select! {
                () = self.drain.cancelled() => Cutoff::Drain,
                () = tokio::time::sleep_until(at) => Cutoff::Expired,
            },
            None => {
                self.drain.cancelled().await;
                Cutoff::Drain
            }
        }
    }
}

/// The status a stream ends with when its token expired.
pub(crate) fn expired() -> Status {
    Status::unauthenticated(
        "the token this stream was opened with has expired; open a new stream with a fresh token",
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use courier_gateway::auth::Source;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokens_stream_ends_when_the_token_does_and_a_password_stream_on_drain() {
        let drain = CancellationToken::new();
        let mut token = Principal::new("svc", Vec::new(), Source::Token);
        token.valid_until = Some(SystemTime::now() + Duration::from_secs(60));
        let ends = StreamEnds::new(drain.clone(), &token);
        let started = Instant::now();
        assert_eq!(ends.reached().await, Cutoff::Expired);
        assert!(started.elapsed() >= Duration::from_secs(59));

        let password = Principal::new("alice", Vec::new(), Source::Password);
        let ends = StreamEnds::new(drain.clone(), &password);
        let waiting = tokio::spawn(async move { ends.reached().await });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiting.is_finished());
        drain.cancel();
        assert_eq!(waiting.await.ok(), Some(Cutoff::Drain));
    }
}
