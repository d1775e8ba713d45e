//! A unary call ends with DEADLINE_EXCEEDED once it has run `grpc.unary_timeout`, or the client's
//! shorter `grpc-timeout`. Streaming calls and health checks pass untouched: a stream lives as long
//! as its client wants, and its end is the drain's or the token's (`stream_end.rs`).
//!
//! The deadline is taken when the call arrives, before anything else runs for it (this layer is the
//! outermost of the server's), so authentication and waiting count towards it. A call cut off may
//! still have taken effect (a produce may have been written): the message says so.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use courier_gateway::metrics::{self, Protocol};
use tokio::time::Instant;
use tonic::{Status, codegen::http};

use super::kinds::{CallKind, CallKinds};

/// tonic itself ends a call at the client's `grpc-timeout`, with CANCELLED, on a timer armed just
/// after this layer's. Timers tick in milliseconds, so this layer's cut for the client's deadline
/// comes one tick earlier, and the client is told DEADLINE_EXCEEDED as gRPC says it should be.
const TIMER_TICK: Duration = Duration::from_millis(1);

/// Ends unary calls at their deadline.
#[derive(Debug, Clone)]
pub(crate) struct UnaryDeadlineLayer {
    kinds: Arc<CallKinds>,
    limit: Duration,
}

impl UnaryDeadlineLayer {
    /// Unary calls (told apart by `kinds`) run at most `limit`.
    pub(crate) fn new(kinds: CallKinds, limit: Duration) -> Self {
        Self {
            kinds: Arc::new(kinds),
            limit,
        }
    }
}

impl<S> tower::Layer<S> for UnaryDeadlineLayer {
    type Service = UnaryDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UnaryDeadline {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`UnaryDeadlineLayer`] puts in front of the services.
#[derive(Debug, Clone)]
pub(crate) struct UnaryDeadline<S> {
    inner: S,
    layer: UnaryDeadlineLayer,
}

/// Who set the deadline that ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// `grpc.unary_timeout`.
    Gateway(Duration),
    /// The client's `grpc-timeout`.
    Client(Duration),
}

impl Bound {
    /// The refusal a call past this bound ends with; the gateway's own bound is counted as a limit.
    fn exceeded(self) -> Status {
        let (by, after) = match self {
            Bound::Gateway(after) => {
                metrics::limit_refused(Protocol::Grpc, "unary_timeout");
                ("the gateway's limit (grpc.unary_timeout)", after)
            }
            Bound::Client(after) => ("the client's deadline (grpc-timeout)", after),
        };
        Status::deadline_exceeded(format!(
            "the call did not finish within {after:?}, {by}; it may still have taken effect \
             (retry a produce with the same courier_id values)"
        ))
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for UnaryDeadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if self.layer.kinds.of(request.uri().path()) != CallKind::Unary {
            return Box::pin(self.inner.call(request));
        }
        let (bound, after) = match client_timeout(request.headers()) {
            Some(client) if client < self.layer.limit => {
                (Bound::Client(client), client.saturating_sub(TIMER_TICK))
            }
            _ => (Bound::Gateway(self.layer.limit), self.layer.limit),
        };
        // Taken now, not when the future is first polled: the call's time started when it arrived.
        let deadline = Instant::now() + after;
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(answer) => answer,
                Err(_) => Ok(bound.exceeded().into_http()),
            }
        })
    }
}

/// The client's `grpc-timeout` (gRPC over HTTP/2: 1 to 8 digits and a unit, `H`, `M`, `S`, `m`,
/// `u` or `n`); `None` when absent or malformed (then the gateway's limit alone applies).
fn client_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", http::HeaderValue::from_str(value).ok()?);
        client_timeout(&headers)
    }

    #[test]
    fn grpc_timeout_is_read_as_the_spec_writes_it() {
        assert_eq!(parsed("200m"), Some(Duration::from_millis(200)));
        assert_eq!(parsed("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parsed("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parsed("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for malformed in ["", "m", "123456789m", "12x", "-1S", "1.5S", "5"] {
            assert_eq!(parsed(malformed), None, "{malformed:?}");
        }
    }
}
