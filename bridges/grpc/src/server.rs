//! The gRPC server: the Streams and Admin services with health, reflection, message limits and HTTP/2
//! keepalive, served on listeners the caller bound (so the caller knows the ports before it serves),
//! plain (h2c) and over TLS (ALPN `h2`, [`Listeners`]: handshakes never hold up the accept loop).
//! Every call but health checks is authenticated first; reflection and Admin are for administrators.
//! Calls at once and the time a unary call may take are limited ([`crate::limits`]).

use std::{io, net::SocketAddr, sync::Arc};

use courier_gateway::{
    auth::Access,
    config::GroupsConfig,
    log::{Log, layers::Metered},
    metrics::Protocol,
    regions::Regions,
    tls::{Gates, Listeners},
};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::Server};

use crate::{
    AdminService, Config, StreamsService,
    admin_role::AdminOnly,
    authentication::AuthenticationLayer,
    connection::CountedConnection,
    fetch::FetchCaps,
    limits::{AdmissionLayer, CallKinds, UnaryDeadlineLayer},
    proto::{
        FILE_DESCRIPTOR_SET,
        v1::{admin_server::AdminServer, streams_server::StreamsServer},
    },
};

/// Everything the gRPC front end needs.
#[derive(Debug)]
pub struct GrpcServer {
    /// The log behind the API.
    pub log: Arc<dyn Log>,
    /// Who may call, and what each caller may do.
    pub access: Access,
    /// The region router, when `log` is one (the Admin service's region calls).
    pub regions: Option<Regions>,
    /// `[grpc]` settings.
    pub config: Config,
    /// `[groups]` settings (default window).
    pub groups: GroupsConfig,
}

/// The gRPC listeners, bound (and the TLS certificates loaded) before anything serves.
#[derive(Debug)]
pub struct GrpcListeners(Listeners);

impl GrpcListeners {
    /// Binds `listen`, and `tls.listen` when `[grpc.tls]` names one; with `[grpc.tls]` and no
    /// address of its own, `listen` speaks TLS (ALPN `h2`). Loads the certificates.
    pub async fn bind(config: &Config) -> Result<Self, ServeError> {
        config.validate().map_err(ServeError::Config)?;
        let listeners =
            Listeners::bind(config.listen, config.tls.as_ref(), "grpc", &[b"h2"]).await?;
        Ok(Self(listeners))
    }

    /// The bound addresses by what they serve: `grpc` (h2c), `grpcs` (TLS).
    pub fn addresses(&self) -> io::Result<Vec<(&'static str, SocketAddr)>> {
        self.0.addresses("grpc", "grpcs")
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `[grpc]` is wrong (the message names the key).
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound, or its TLS certificates did not load.
    #[error("{0}")]
    Listen(#[from] courier_gateway::Error),
    /// Reflection could not load the API's descriptors.
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The API's descriptors, read to tell streaming calls from unary ones, did not decode.
    #[error("reading the API's descriptors: {0}")]
    Descriptors(#[from] prost::DecodeError),
    /// The transport failed.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl GrpcServer {
    /// Serves until `drain` is cancelled, then stops accepting, lets streams finish (they end with
    /// UNAVAILABLE after answering what they hold) and returns once every connection is done.
    pub async fn serve(
        self,
        listeners: GrpcListeners,
        drain: CancellationToken,
    ) -> Result<(), ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Both versions: grpcurl and Postman speak v1, many language runtimes still only v1alpha.
        // Both for administrators only: they map the whole API.
        let admin_only = AdminOnly::new(self.access.authorizer.clone(), "reflection");
        let reflection_v1 = InterceptedService::new(reflection().build_v1()?, admin_only.clone());
        let reflection_v1alpha = InterceptedService::new(reflection().build_v1alpha()?, admin_only);

        // Which calls stream, from the descriptors of every service served below.
        let kinds = CallKinds::from_descriptor_sets(&[
            FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])?;

        let limit = self.config.max_message_bytes;
        // What clients produce is counted as gRPC's (the metrics layer); Admin produces nothing.
        let streams = StreamsServer::new(StreamsService::new(
            Arc::new(Metered::new(self.log.clone(), Protocol::Grpc)),
            self.access.clone(),
            self.groups.clone(),
            FetchCaps::of(&self.config),
            drain.clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
        let admin = AdminServer::new(AdminService::new(
            self.log.clone(),
            self.regions.clone(),
            self.access.authorizer.clone(),
        ))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);

        // The Log was opened before the server was built, so the API is ready the moment it serves.
        health.set_serving::<StreamsServer<StreamsService>>().await;
        health.set_serving::<AdminServer<AdminService>>().await;
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;

        let shutdown = {
            let drain = drain.clone();
            async move {
                drain.cancelled().await;
                // Load balancers polling health stop sending new calls while streams finish.
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                health
                    .set_not_serving::<StreamsServer<StreamsService>>()
                    .await;
                health.set_not_serving::<AdminServer<AdminService>>().await;
            }
        };

        // Its own token: accepting also stops when tonic fails, without draining anything else.
        let stop_accepting = drain.child_token();
        let handshake_timeout = self.config.handshake_timeout;
        let limits = &self.access.limits.connections;
        let gates = Gates {
            plain: limits.gate(Protocol::Grpc, "grpc"),
            tls: limits.gate(Protocol::Grpc, "grpcs"),
        };
        let incoming = ReceiverStream::new(
            listeners.0.incoming_through(gates, stop_accepting.clone()),
        )
        .map(move |connection| {
            Ok::<_, io::Error>(CountedConnection::new(connection, handshake_timeout))
        });
        let served = Server::builder()
            .http2_keepalive_interval(Some(self.config.keepalive_interval))
            .http2_keepalive_timeout(Some(self.config.keepalive_timeout))
            .max_concurrent_streams(self.config.max_concurrent_streams)
            .initial_stream_window_size(self.config.stream_window_bytes)
            .initial_connection_window_size(self.config.connection_window_bytes)
            // tonic's own `concurrency_limit_per_connection`, `load_shed` and `timeout` stay off:
            // the layers below do their jobs for the whole gateway and answer with the right status
            // (`limits.rs` says why tonic's do not).
            //
            // Outermost, so a unary call's time counts from its arrival (authentication included),
            // and its deadline is armed before tonic's own for the client's `grpc-timeout`.
            .layer(UnaryDeadlineLayer::new(
                kinds.clone(),
                self.config.unary_timeout,
            ))
            // Outside every service, so none runs for a caller that is not authenticated; inside
            // the connection, whose `Peer` (address, client certificate) it reads.
            .layer(AuthenticationLayer::new(self.access.authenticator.clone()))
            // Behind authentication, so only callers who authenticated take a place: a flood of bad
            // credentials is the authenticator's to refuse (its bounded hashing pool and throttle)
            // and cannot take the places of clients that log in. In front of every service, so a
            // refused call costs nothing more.
            .layer(AdmissionLayer::new(kinds, &self.config))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(streams)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        stop_accepting.cancel();
        served?;
        Ok(())
    }
}
