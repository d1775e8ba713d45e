//! At most so many unary calls and so many streams at once, across every connection, and of each
//! at most so many for one caller: a call over a limit is refused at once with RESOURCE_EXHAUSTED
//! (it never waits for a place), and counted.
//!
//! A caller is a principal by name, whichever connections and replicas of its clients it comes
//! through, or an anonymous client by its address (an IPv6 client by its /64), as the quotas know
//! them ([`QuotaKey`]). The per-caller limit is what keeps one caller (a runaway deployment, a
//! client opening streams in a loop) from taking every place of the gateway from the others.
//!
//! A call holds its place until its response body is done or dropped, not only until its handler
//! returns: a stream's handler returns as soon as the stream is set up, and the stream then lives in
//! its body until it ends or the client goes away.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use courier_gateway::{
    auth::Principal,
    limits::QuotaKey,
    metrics::{self, Protocol},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{
    Status,
    codegen::{Body, http},
};

use super::kinds::{CallKind, CallKinds};
use crate::{Config, connection::Peer};

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
    /// How many places each caller holds.
    shares: Arc<Shares>,
}

/// A call's places: the gateway's and the caller's share, given back when dropped (in that
/// order, so the caller's next call never finds its share free and the gateway's place not yet).
#[derive(Debug)]
struct Place {
    _permit: OwnedSemaphorePermit,
    _share: Option<Share>,
}

impl Gate {
    /// `limit` places of `what` for the gateway (config key `key`), `per_caller` of them at most
    /// for one caller (config key `per_caller_key`; 0 is no limit).
    fn new(
        what: &'static str,
        (key, limit): (&'static str, usize),
        (per_caller_key, per_caller): (&'static str, usize),
    ) -> Self {
        Self {
            places: Arc::new(Semaphore::new(limit)),
            limit,
            key,
            what,
            shares: Arc::new(Shares {
                limit: per_caller,
                key: per_caller_key,
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A place for one call of `caller`, or the refusal it gets.
    fn enter(&self, caller: impl FnOnce() -> QuotaKey) -> Result<Place, Status> {
        // The caller's share first: a caller at its limit is told so, and takes nothing from the
        // gateway's places while it is refused.
        let share = Shares::enter(&self.shares, caller, self.what)?;
        let permit = self.places.clone().try_acquire_owned().map_err(|_| {
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
        })?;
        Ok(Place {
            _permit: permit,
            _share: share,
        })
    }
}

/// The places of one kind each caller holds, counted by caller; a caller is in the map only while
/// it has calls in progress (or one being refused the gateway's place), so the map stays about as
/// large as the gateway's places.
#[derive(Debug)]
struct Shares {
    /// Most places one caller may hold; 0 is no limit.
    limit: usize,
    /// The config key (after `grpc.`), also the metric's `limit` label.
    key: &'static str,
    held: Mutex<HashMap<QuotaKey, usize>>,
}

/// One place of a caller's share, given back when dropped.
#[derive(Debug)]
struct Share {
    shares: Arc<Shares>,
    caller: QuotaKey,
}

impl Shares {
    /// A place of `caller`'s share (none is counted when there is no limit), or its refusal.
    /// `caller` is asked only when there is a limit: without one, a call costs no caller's key.
    fn enter(
        shares: &Arc<Self>,
        caller: impl FnOnce() -> QuotaKey,
        what: &str,
    ) -> Result<Option<Share>, Status> {
        if shares.limit == 0 {
            return Ok(None);
        }
        let caller = caller();
        {
            let mut held = shares.held.lock().unwrap_or_else(PoisonError::into_inner);
            let count = held.entry(caller.clone()).or_default();
            if *count >= shares.limit {
                metrics::limit_refused(Protocol::Grpc, shares.key);
                tracing::debug!(
                    limit = shares.limit,
                    key = shares.key,
                    %caller,
                    "call refused: the caller's limit reached"
                );
                return Err(Status::resource_exhausted(format!(
                    "{caller}: at the limit of {} {what} in progress at once for one caller \
                     (grpc.{}); retry when one has ended",
                    shares.limit, shares.key
                )));
            }
            *count += 1;
        }
        Ok(Some(Share {
            shares: shares.clone(),
            caller,
        }))
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self
            .shares
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

/// Who a call is counted for: its principal by name, or an anonymous client by its address.
pub(super) fn caller_of<B>(request: &http::Request<B>) -> QuotaKey {
    let address = request
        .extensions()
        .get::<Peer>()
        .and_then(|peer| peer.address);
    match request.extensions().get::<Principal>() {
        Some(principal) => principal.account_key(None, address),
        // Authentication always names one; were it missing, the call is an anonymous one.
        None => QuotaKey::anonymous(None, address),
    }
}

impl AdmissionLayer {
    /// Limits from `config` (`max_unary_calls`, `max_streaming_calls` and their `_per_caller`
    /// twins), calls told apart by `kinds`.
    pub(crate) fn new(kinds: CallKinds, config: &Config) -> Self {
        Self {
            gates: Arc::new(Gates {
                kinds,
                unary: Gate::new(
                    "unary calls",
                    ("max_unary_calls", config.max_unary_calls),
                    (
                        "max_unary_calls_per_caller",
                        config.unary_calls_per_caller(),
                    ),
                ),
                streaming: Gate::new(
                    "streaming calls",
                    ("max_streaming_calls", config.max_streaming_calls),
                    (
                        "max_streaming_calls_per_caller",
                        config.streaming_calls_per_caller(),
                    ),
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
        let place = match gate
            .map(|gate| gate.enter(|| caller_of(&request)))
            .transpose()
        {
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
    place: Option<Place>,
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
