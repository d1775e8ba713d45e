//! Authentication of every call, as a tower layer in front of every service: the `authorization`
//! metadata (`Basic` or `Bearer`), the peer's address and its TLS client certificate (the
//! connection's [`Peer`]) go to the [`Authenticator`]; the call goes on with the [`Principal`] in
//! its extensions, or is answered UNAUTHENTICATED with the reason.
//!
//! Health checks (`grpc.health.v1.Health`) pass without credentials: probes carry none, and they
//! reveal nothing but whether the gateway serves.
//!
//! Basic credentials are sent with every call; the [`Authenticator`] remembers a verified password
//! for 30 s, so a caller does not pay a password check per call (a changed or removed password
//! takes effect when the users file's new version is loaded). Bearer tokens are checked on every
//! call; that is cheap.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    task::{Context, Poll},
};

use courier_gateway::auth::{Attempt, Authenticator, Credentials, Failure, Principal};
use tonic::{Request, Status, codegen::http};

use crate::Peer;

/// The path prefix of the health service, served to anyone.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// Where a call came from when its connection did not say: not loopback, so it is treated as a
/// remote client (anonymous access, if only loopback has it, is refused).
const UNKNOWN_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Authenticates every call but health checks.
#[derive(Debug, Clone)]
pub(crate) struct AuthenticationLayer {
    authenticator: Authenticator,
}

impl AuthenticationLayer {
    pub(crate) fn new(authenticator: Authenticator) -> Self {
        Self { authenticator }
    }
}

impl<S> tower::Layer<S> for AuthenticationLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service [`AuthenticationLayer`] puts in front of the services.
#[derive(Debug, Clone)]
pub(crate) struct Authenticate<S> {
    inner: S,
    authenticator: Authenticator,
}

impl<S, B, R> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service that was made ready is the one that serves this call (tower's contract);
        // its clone waits for the next one.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            if request.uri().path().starts_with(HEALTH) {
                return inner.call(request).await;
            }
            // The parts only: the body need not be `Sync` to be held across the check.
            let peer = request.extensions().get::<Peer>().cloned();
            match admit(&authenticator, request.headers(), peer.as_ref()).await {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Who the caller with `headers` on `peer`'s connection is, or the status that refuses it.
async fn admit(
    authenticator: &Authenticator,
    headers: &http::HeaderMap,
    peer: Option<&Peer>,
) -> Result<Principal, Status> {
    let address = peer.and_then(|peer| peer.address).unwrap_or(UNKNOWN_PEER);
    let certificate = peer.and_then(|peer| peer.certificate.as_deref());
    let header = headers
        .get(http::header::AUTHORIZATION)
        .map(http::HeaderValue::as_bytes);
    let credentials = Credentials::from_authorization(header).map_err(|malformed| {
        tracing::debug!(peer = %address, "malformed authorization metadata");
        Status::unauthenticated(malformed.to_string())
    })?;

    let attempt = Attempt {
        peer: address,
        credentials: &credentials,
        certificate,
    };
    authenticator.authenticate(attempt).await.map_err(refusal)
}

/// The status of a failed authentication.
fn refusal(failure: Failure) -> Status {
    match failure {
        // Not the client's credentials: it should retry, not give up or ask for a new password.
        Failure::Busy => Status::unavailable(failure.to_string()),
        // Too many of this address's logins waiting: a limit, not the credentials' fault.
        Failure::Throttled => Status::resource_exhausted(failure.to_string()),
        _ => Status::unauthenticated(failure.to_string()),
    }
}

/// The principal the [`AuthenticationLayer`] established for `request`.
pub(crate) fn principal_of<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request.extensions().get::<Principal>().ok_or_else(|| {
        // Only a server built without the layer gets here; refusing is the safe answer.
        Status::unauthenticated("the call was not authenticated")
    })
}

#[cfg(test)]
mod tests;
