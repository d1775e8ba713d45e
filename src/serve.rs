//! `courier serve`: open the log, start the front ends, print the ready line, wait for a signal, drain.
//!
//! Lifecycle: the root token is cancelled by SIGTERM/SIGINT or by any component that fails (the process
//! stops whole, never half). Drain order: front ends stop accepting and finish what they hold (gRPC
//! streams answer in-flight requests, subscribers commit), bounded by `shutdown.grace`; then the log
//! syncs and closes. The HTTP endpoint says "not ready" from the first moment of the drain and
//! answers until the log is closed.

use std::{io::Write, net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use courier_gateway::{
    auth::{Access, Anonymous, Auth, Protected, ProtocolAuth},
    config::BackendConfig,
    limits::ClientLimits,
    log::{Embedded, Kafka, Log, layers},
    regions::Regions,
    telemetry::Tracing,
    tls::Listeners as TlsListeners,
};
use courier_grpc::{GrpcListeners, GrpcServer};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Config,
    http::{self, board, board::Board},
    telemetry,
};

/// Longest the HTTP endpoint may take to answer its last requests once the log is closed.
const HTTP_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

/// The log the front ends share, with its layers, and what the status page and Admin need of it.
struct OpenedLog {
    log: Arc<dyn Log>,
    /// `kind:where`, for logs and the status page.
    description: String,
    /// The region router, when the log is one: handed to the Admin service and the status page by
    /// name, since the Log trait has no way back to it.
    router: Option<Regions>,
}

/// Opens the configured backend under the layers every backend shares (see `log::layers`).
async fn open_log(config: &Config) -> Result<OpenedLog> {
    let topics = &config.topics;
    Ok(match &config.log {
        BackendConfig::Embedded(embedded) => {
            let log = Embedded::open(
                embedded,
                topics.clone(),
                config.groups.clone(),
                &config.region,
            )
            .await
            .with_context(|| {
                format!(
                    "opening the embedded log in {}",
                    embedded.data_dir.display()
                )
            })?;
            OpenedLog {
                log: Arc::new(layers::stack(log, topics)),
                description: config.log_description(),
                router: None,
            }
        }
        BackendConfig::Kafka(kafka) => {
            let log = Kafka::connect(kafka, topics.clone(), config.groups.clone(), &config.region)
                .await
                .with_context(|| format!("connecting to Kafka at {}", kafka.bootstrap_servers))?;
            OpenedLog {
                log: Arc::new(layers::stack(log, topics)),
                description: config.log_description(),
                router: None,
            }
        }
        BackendConfig::Regions(regions) => {
            // The topic policy sits inside the router, per region; validation outside it.
            let router = Regions::open(
                regions,
                &config.region,
                topics.clone(),
                config.groups.clone(),
            )
            .context("opening the region router (log.kind = \"regions\")")?;
            OpenedLog {
                log: Arc::new(layers::front(router.clone(), topics)),
                description: config.log_description(),
                router: Some(router),
            }
        }
    })
}

/// Runs the gateway until a signal, then drains. Returns once everything is closed.
pub(crate) async fn run(config: Config) -> Result<()> {
    // What the types cannot check (the TLS tables' rules among them), before anything is opened.
    config.validate()?;
    raise_open_files_limit();
    let root = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Before anything counts: every metric from here on is exported.
    let prometheus = http::install_recorder()?;

    let OpenedLog {
        log,
        description: log_description,
        router,
    } = open_log(&config).await?;
    let auth = start_auth(&config, root.child_token()).await?;
    // One set for every front end: a principal's quota covers its connections in every protocol.
    let limits = ClientLimits::new(&config.limits);
    let (tracing, exporting) = telemetry::start_tracing(&config.telemetry.tracing)?.unzip();
    let front_ends = FrontEnds {
        auth: &auth,
        limits: &limits,
        tracing: &tracing,
    };
    let listeners = Listeners::bind(&config, &log, &front_ends).await?;
    let addresses = listeners.addresses();
    let board = Arc::new(Board::new(&config.region, &log_description, router.clone()));

    let drain = root.child_token();
    let grpc = GrpcServer {
        log: log.clone(),
        access: front_ends.access("grpc", None),
        regions: router,
        config: config.grpc.clone(),
        groups: config.groups.clone(),
    };
    let grpc_task = tracker.spawn({
        let (listener, drain, root) = (listeners.grpc.0, drain.clone(), root.clone());
        async move {
            let result = grpc.serve(listener, drain).await;
            if let Err(error) = &result {
                tracing::error!(%error, "gRPC server failed; stopping the gateway");
            }
            root.cancel();
            result
        }
    });
    if let Some((server, ..)) = listeners.mqtt {
        let (drain, root) = (drain.clone(), root.clone());
        tracker.spawn(async move {
            if let Err(error) = server.serve(drain).await {
                tracing::error!(%error, "MQTT server failed; stopping the gateway");
                root.cancel();
            }
        });
    }
    if let Some((server, _)) = listeners.amqp {
        let (drain, root) = (drain.clone(), root.clone());
        tracker.spawn(async move {
            if let Err(error) = server.serve(drain).await {
                tracing::error!(%error, "AMQP server failed; stopping the gateway");
                root.cancel();
            }
        });
    }
    tracker.close();
    let operations = Operations::start(
        &config,
        &board,
        &log,
        prometheus,
        listeners.http,
        auth.access("http", None),
        &root,
    );

    // The ready line: tests and operators wait for it; it names the bound addresses, and who may
    // connect without credentials.
    let anonymous = anonymous_clients(&auth, &config);
    println!(
        "courier ready {addresses} log={log_description} region={} anonymous={anonymous}",
        config.region
    );
    std::io::stdout()
        .flush()
        .context("writing the ready line")?;
    tracing::info!(%addresses, log = %log_description, "courier is serving");
    if anonymous == "loopback" {
        tracing::warn!(
            "no authentication is configured: clients without credentials are served only from loopback addresses (and there they may administer); configure [auth] (users_file, jwt) or set auth.allow_anonymous = true"
        );
    }

    tokio::select! {
        signal = shutdown_signal() => tracing::info!(signal = signal?, "draining"),
        () = root.cancelled() => tracing::warn!("a component stopped; draining"),
    }
    // Load balancers see "not ready" first; then listeners stop and connections drain.
    board.set_draining();
    drain.cancel();

    let drained = tokio::time::timeout(config.shutdown.grace, tracker.wait()).await;
    if drained.is_err() {
        tracing::warn!(grace = ?config.shutdown.grace, "drain deadline passed; closing with connections still open");
    }
    let closed = log.close().await.context("closing the log");
    operations.stop().await;
    if let Some(exporting) = exporting {
        exporting.stop().await;
    }
    closed?;
    tracing::info!("courier stopped");

    if drained.is_ok() {
        grpc_task
            .await
            .context("the gRPC task panicked")?
            .context("the gRPC server failed")?;
    }
    Ok(())
}

/// What every front end is handed beside the log.
struct FrontEnds<'a> {
    auth: &'a Auth,
    /// One set for every front end: a principal's quota covers its connections in every protocol.
    limits: &'a ClientLimits,
    tracing: &'a Option<Tracing>,
}

impl FrontEnds<'_> {
    /// `protocol`'s access: its authentication (with its older `[<protocol>.auth]` table over
    /// `[auth]`), the one authorizer, the limits and quotas, and tracing while it is on.
    fn access(&self, protocol: &'static str, override_: Option<&ProtocolAuth>) -> Access {
        self.auth
            .access(protocol, override_)
            .with_limits(self.limits.clone())
            .with_tracing(self.tracing.clone())
    }
}

/// Every listener, bound before anything serves: a port in use fails the start whole.
struct Listeners {
    /// The gRPC listeners and their addresses by what they serve (`grpc`, `grpcs`).
    grpc: (GrpcListeners, Vec<(&'static str, SocketAddr)>),
    /// The endpoint and its addresses by what they serve (`mqtt`, `mqtt-ws`, `mqtts`, `mqtt-wss`).
    mqtt: Option<(courier_mqtt::Server, Vec<(&'static str, SocketAddr)>)>,
    /// The endpoint and its addresses by what they serve (`amqp`, `amqps`).
    amqp: Option<(courier_amqp::Server, Vec<(&'static str, SocketAddr)>)>,
    /// The HTTP listeners and their addresses by what they serve (`http`, `https`).
    http: Option<(TlsListeners, Vec<(&'static str, SocketAddr)>)>,
}

impl Listeners {
    async fn bind(config: &Config, log: &Arc<dyn Log>, front_ends: &FrontEnds<'_>) -> Result<Self> {
        let grpc = GrpcListeners::bind(&config.grpc).await.with_context(|| {
            format!(
                "starting the gRPC endpoint on {} (grpc.listen)",
                config.grpc.listen
            )
        })?;
        let grpc_addresses = grpc
            .addresses()
            .context("reading the gRPC listeners' addresses")?;
        let grpc = (grpc, grpc_addresses);
        let mqtt = if config.mqtt.enabled {
            let server = courier_mqtt::Server::bind(
                log.clone(),
                config.mqtt.clone(),
                front_ends.access("mqtt", config.mqtt.auth.as_ref()),
            )
            .await
            .with_context(|| {
                format!(
                    "starting the MQTT endpoint on {} (mqtt.listen)",
                    config.mqtt.listen
                )
            })?;
            let addresses = server
                .addresses()
                .context("reading the MQTT listeners' addresses")?;
            Some((server, addresses))
        } else {
            None
        };
        let amqp = if config.amqp.enabled {
            let server = courier_amqp::Server::bind(
                log.clone(),
                config.amqp.clone(),
                front_ends.access("amqp", config.amqp.auth.as_ref()),
            )
            .await
            .with_context(|| {
                format!(
                    "starting the AMQP endpoint on {} (amqp.listen)",
                    config.amqp.listen
                )
            })?;
            let addresses = server
                .addresses()
                .context("reading the AMQP listeners' addresses")?;
            Some((server, addresses))
        } else {
            None
        };
        let http = if config.http.enabled {
            config.http.validate()?;
            let listeners = TlsListeners::bind(
                config.http.listen,
                config.http.tls.as_ref(),
                "http",
                &[b"http/1.1"],
            )
            .await
            .with_context(|| {
                format!(
                    "starting the HTTP endpoint on {} (http.listen)",
                    config.http.listen
                )
            })?;
            let addresses = listeners
                .addresses("http", "https")
                .context("reading the HTTP listeners' addresses")?;
            Some((listeners, addresses))
        } else {
            None
        };
        Ok(Self {
            grpc,
            mqtt,
            amqp,
            http,
        })
    }

    /// What the ready line names: `grpc=... mqtt=... mqtt-ws=... mqtts=... mqtt-wss=... amqp=...
    /// http=...`.
    fn addresses(&self) -> String {
        let mut addresses = String::new();
        for (name, address) in &self.grpc.1 {
            addresses.push_str(&format!("{name}={address} "));
        }
        let mut addresses = addresses.trim_end().to_owned();
        if let Some((_, bound)) = &self.mqtt {
            for (name, address) in bound {
                addresses.push_str(&format!(" {name}={address}"));
            }
        }
        if let Some((_, bound)) = &self.amqp {
            for (name, address) in bound {
                addresses.push_str(&format!(" {name}={address}"));
            }
        }
        if let Some((_, bound)) = &self.http {
            for (name, address) in bound {
                addresses.push_str(&format!(" {name}={address}"));
            }
        }
        addresses
    }
}

/// The HTTP endpoint and the probes behind it. They outlive the drain, so readiness says "draining"
/// until the log is closed.
struct Operations {
    stop: CancellationToken,
    probes: tokio::task::JoinHandle<()>,
    http: Option<tokio::task::JoinHandle<()>>,
}

impl Operations {
    fn start(
        config: &Config,
        board: &Arc<Board>,
        log: &Arc<dyn Log>,
        prometheus: metrics_exporter_prometheus::PrometheusHandle,
        listener: Option<(TlsListeners, Vec<(&'static str, SocketAddr)>)>,
        access: Access,
        root: &CancellationToken,
    ) -> Self {
        let stop = CancellationToken::new();
        let probes = tokio::spawn(board::run_probes(
            board.clone(),
            log.clone(),
            prometheus.clone(),
            config.http.probe_interval,
            board::LagReading {
                interval: config.http.lag_interval,
                groups: config.http.lag_groups,
            },
            stop.clone(),
        ));
        let http = listener.map(|(listeners, addresses)| {
            let (board, stop, root) = (board.clone(), stop.clone(), root.clone());
            tokio::spawn(async move {
                if let Err(error) =
                    http::serve(listeners, &addresses, prometheus, board, access, stop).await
                {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "HTTP endpoint failed; stopping the gateway"
                    );
                    root.cancel();
                }
            })
        });
        Self { stop, probes, http }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.probes.await;
        if let Some(http) = self.http {
            // Idle keep-alive connections (scrapers) must not hold the exit.
            let _ = tokio::time::timeout(HTTP_CLOSE, http).await;
        }
    }
}

/// Reads `[auth]` (users, policy, JWKS) and starts watching its files. What clients must not reach
/// is the gateway's own state: the MQTT tables and the region canary.
async fn start_auth(config: &Config, stop: CancellationToken) -> Result<Auth> {
    let mut own = vec![
        config.mqtt.sessions_topic.clone(),
        config.mqtt.retained_topic.clone(),
        config.mqtt.qos2_topic.clone(),
    ];
    if let BackendConfig::Regions(regions) = &config.log {
        own.push(regions.canary_topic.clone());
    }
    let auth = Auth::start(
        &config.auth,
        Protected::new(own),
        &[config.mqtt.auth.as_ref(), config.amqp.auth.as_ref()],
        stop,
    )
    .await
    .context("starting authentication ([auth])")?;
    tracing::info!(
        hashing_threads = auth.hashing_pool().threads(),
        policy = auth.authorizer().has_policy(),
        "authentication ready"
    );
    Ok(auth)
}

/// Who is served without credentials, for the ready line: `loopback` (nothing configured: the
/// secure default), `anywhere` (`allow_anonymous = true` somewhere), or `no`.
fn anonymous_clients(auth: &Auth, config: &Config) -> &'static str {
    let modes = [
        auth.authenticator("grpc", None).anonymous(),
        auth.authenticator("mqtt", config.mqtt.auth.as_ref())
            .anonymous(),
        auth.authenticator("amqp", config.amqp.auth.as_ref())
            .anonymous(),
    ];
    if modes.contains(&Anonymous::Everywhere) {
        "anywhere"
    } else if modes.contains(&Anonymous::LoopbackOnly) {
        "loopback"
    } else {
        "no"
    }
}

/// Resolves on SIGTERM or SIGINT with the signal's name.
async fn shutdown_signal() -> Result<&'static str> {
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

/// Raises the soft open-files limit to the hard one, as servers that hold many connections do
/// (Go's runtime does it for every program): the soft default is often 1,024, which would cap the
/// gateway's connections (`limits.max_connections` defaults to 90% of it) far below what the host
/// allows.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-files limit"),
            Err(error) => {
                tracing::warn!(%error, soft, hard, "could not raise the open-files limit")
            }
        },
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "could not read the open-files limit"),
    }
}
