//! The operators' HTTP endpoint (`[http]`, default port 8080):
//! - `/healthz`: the process is alive and its runtime answers (liveness);
//! - `/readyz`: the log answers, the listeners are up, and the gateway is not draining (readiness);
//!   load balancers take a draining replica out before its listeners stop. A ready region router
//!   names a stale standby region on the lines after `ready` (it does not fail readiness);
//! - `/metrics`: every metric in Prometheus' text format (`courier_gateway::metrics` names them);
//! - `/` and `/api/status`: the status page (one HTML file, no build step) and the JSON it polls;
//!   once authentication is configured, only for a principal with the admin role (HTTP Basic with
//!   a user of the users file, or `authorization: Bearer` with a token). Probes and `/metrics` stay
//!   open: kubelets and scrapers carry no credentials, and they tell nothing a client could abuse.
//!
//! Modules: [`board`] keeps what the page shows and runs the probes that fill it; [`lag`] reads
//! consumer lag and exports it with bounded series.

pub(crate) mod board;
mod checkpoints;
pub(crate) mod lag;

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use axum::{
    Json, Router,
    extract::{ConnectInfo, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use courier_gateway::{
    auth::{Access, Attempt, Credentials, Failure},
    metrics::names,
    tls::{Connection, Listeners, MaybeTls},
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use self::board::Board;

/// The status page: plain HTML with its script inline, served as is.
const STATUS_PAGE: &str = include_str!("http/status.html");

/// Buckets of the produce latency histogram, in seconds: sub-millisecond embedded appends up to
/// Kafka's slowest acknowledgements.
const LATENCY_BUCKETS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// Installs the process-wide Prometheus recorder; every `metrics` call from then on is exported.
pub(crate) fn install_recorder() -> Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::PRODUCE_LATENCY.to_owned()),
            &LATENCY_BUCKETS,
        )
        .context("configuring the latency histogram")?
        .install_recorder()
        .context("installing the metrics recorder")
        .inspect(|_| courier_gateway::metrics::describe())
}

#[derive(Clone)]
struct Endpoint {
    prometheus: PrometheusHandle,
    board: Arc<Board>,
    access: Access,
}

/// Serves the endpoint on `listeners` (plain, TLS, or both) until `stop` is cancelled. It outlives
/// the drain on purpose: `/readyz` answers 503 and `/metrics` keeps answering while connections
/// close.
pub(crate) async fn serve(
    listeners: Listeners,
    addresses: &[(&'static str, SocketAddr)],
    prometheus: PrometheusHandle,
    board: Arc<Board>,
    access: Access,
    stop: CancellationToken,
) -> Result<()> {
    let endpoint = Endpoint {
        prometheus,
        board,
        access,
    };
    let operators = Router::new()
        .route("/", get(status_page))
        .route("/api/status", get(status))
        .route_layer(middleware::from_fn_with_state(
            endpoint.clone(),
            operators_only,
        ));
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(operators)
        .with_state(endpoint);
    let listener = Accepted {
        incoming: listeners.incoming(stop.clone()),
        local: addresses
            .first()
            .map(|(_, address)| *address)
            .context("the HTTP endpoint has no listener")?,
    };
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await
    .context("serving HTTP")
}

/// Lets a request through to the status page only for a principal that may administer (anyone
/// served, while no authentication is configured). A browser asked with `WWW-Authenticate: Basic`
/// prompts for a user of the users file.
async fn operators_only(
    State(endpoint): State<Endpoint>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes());
    let Ok(credentials) = Credentials::from_authorization(header) else {
        return (
            StatusCode::BAD_REQUEST,
            "the authorization header is neither Basic nor Bearer\n",
        )
            .into_response();
    };
    let attempt = Attempt {
        peer,
        credentials: &credentials,
        certificate: None,
    };
    match endpoint.access.authenticator.authenticate(attempt).await {
        Ok(principal) if endpoint.access.authorizer.may_administer(&principal) => {
            next.run(request).await
        }
        Ok(principal) => (
            StatusCode::FORBIDDEN,
            format!("{} does not have the admin role\n", principal.name),
        )
            .into_response(),
        Err(failure @ Failure::Busy) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("{failure}\n"),
        )
            .into_response(),
        Err(failure @ Failure::Throttled) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "5")],
            format!("{failure}\n"),
        )
            .into_response(),
        Err(failure) => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"courier\", charset=\"UTF-8\"",
            )],
            format!("{failure}\n"),
        )
            .into_response(),
    }
}

/// The client's address, for authentication (its throttle and its audit events).
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Accepted>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Accepted>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// The connections [`Listeners`] accepted (their TLS handshakes done), as axum takes them.
struct Accepted {
    incoming: tokio::sync::mpsc::Receiver<Connection>,
    /// The first bound address, for axum's logs.
    local: SocketAddr,
}

impl axum::serve::Listener for Accepted {
    type Io = MaybeTls;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => (connection.stream, connection.peer),
            // Accepting stopped with the endpoint: axum's graceful shutdown ends the serve.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn status_page() -> Html<&'static str> {
    Html(STATUS_PAGE)
}

async fn status(State(endpoint): State<Endpoint>) -> Json<board::Status> {
    Json(endpoint.board.status())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(endpoint): State<Endpoint>) -> Response {
    match endpoint.board.not_ready_because() {
        None => {
            let mut body = "ready\n".to_owned();
            for warning in endpoint.board.ready_but() {
                body.push_str(&warning);
                body.push('\n');
            }
            (StatusCode::OK, body).into_response()
        }
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(endpoint): State<Endpoint>) -> Response {
    // Consumer lag comes from the last reading's own recorder (`lag.rs` says why).
    let mut body = endpoint.prometheus.render();
    body.push_str(&endpoint.board.lag_metrics());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
