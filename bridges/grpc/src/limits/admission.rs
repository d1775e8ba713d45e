//! At most so many unary calls and so many streams at once, across every connection: a call over
//! the limit is refused at once with RESOURCE_EXHAUSTED (it never waits for a place), and counted.
//!
//! A call holds its place until its response body is done or dropped, not only until its handler
//! returns: a stream's handler returns as soon as the stream is set up, and the stream then lives in
//! its body until it ends or the client goes away.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use courier_gateway::metrics::{self, Protocol};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{
    Status,
    codegen::{Body, http},
};

use super::kinds::{CallKind, CallKinds};
use crate::Config;

/// Limits the calls in progress of each kind.
#[derive(Debug, Clone)]
pub(crate) struct AdmissionLayer {
    gates: Arc<Gates>,
}

#[derive(Debug)]
struct Gates {
    kinds: CallKinds,
    unary: Gate,
    streaming: Gate,
}

/// The places of one kind of call.
#[derive(Debug)]
struct Gate {
    places: Arc<Semaphore>,
    limit: usize,
    /// The config key (after `grpc.`), which is also the metric's `limit` label.
    key: &'static str,
    what: &'static str,
}

impl Gate {
    fn new(limit: usize, key: &'static str, what: &'static str) -> Self {
        Self {
            places: Arc::new(Semaphore::new(limit)),
            limit,
            key,
            what,
        }
    }

    /// A place for one call, or the refusal the caller gets.
    fn enter(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.places.clone().try_acquire_owned().map_err(|_| {
            metrics::limit_refused(Protocol::Grpc, self.key);
            tracing::debug!(
                limit = self.limit,
                key = self.key,
                "call refused: limit reached"
            );
            Status::resource_exhausted(format!(
                "the gateway is serving its limit of {} {} at once (grpc.{}); retry with backoff",
                self.limit, self.what, self.key
            ))
        })
    }
}

impl AdmissionLayer {
    /// Limits from `config` (`max_unary_calls`, `max_streaming_calls`), calls told apart by `kinds`.
    pub(crate) fn new(kinds: CallKinds, config: &Config) -> Self {
        Self {
            gates: Arc::new(Gates {
                kinds,
                unary: Gate::new(config.max_unary_calls, "max_unary_calls", "unary calls"),
                streaming: Gate::new(
                    config.max_streaming_calls,
                    "max_streaming_calls",
                    "streaming calls",
                ),
            }),
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            gates: self.gates.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] puts in front of the services.
#[derive(Debug, Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    gates: Arc<Gates>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Admission<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<Held<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let gate = match self.gates.kinds.of(request.uri().path()) {
            CallKind::Unary => Some(&self.gates.unary),
            CallKind::Streaming => Some(&self.gates.streaming),
            CallKind::Probe => None,
        };
        let place = match gate.map(Gate::enter).transpose() {
            Ok(place) => place,
            Err(refusal) => {
                let response = refusal.into_http::<R>().map(Held::without_place);
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|body| Held { body, place }))
        })
    }
}

/// A response body holding its call's place until it is done or dropped.
#[derive(Debug, Default)]
pub(crate) struct Held<B> {
    body: B,
    place: Option<OwnedSemaphorePermit>,
}

impl<B> Held<B> {
    fn without_place(body: B) -> Self {
        Self { body, place: None }
    }
}

impl<B: Body + Unpin> Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let held = self.get_mut();
        let frame = Pin::new(&mut held.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            // The call is over: its place is free before the connection gets round to dropping us.
            held.place = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
