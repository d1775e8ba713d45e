//! `courier serve`: open the log, start the front ends, print the ready line, wait for a signal, drain.
//!
//! Lifecycle: the root token is cancelled by SIGTERM/SIGINT or by any component that fails (the process
//! stops whole, never half). Drain order: front ends stop accepting and finish what they hold (gRPC
//! streams answer in-flight requests, subscribers commit), bounded by `shutdown.grace`; then the log
//! syncs and closes. The HTTP endpoint says "not ready" from the first moment of the drain and
//! answers until the log is closed.

use std::{io::Write, sync::Arc};

use anyhow::{Context, Result};
use courier_gateway::{
    config::BackendConfig,
    grpc::GrpcServer,
    log::{
        Embedded, Kafka, Log,
        layers::{self, Validated},
    },
    regions::Regions,
};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Config,
    http::{self, board, board::Board},
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
                description: format!("embedded:{}", embedded.data_dir.display()),
                router: None,
            }
        }
        BackendConfig::Kafka(kafka) => {
            let log = Kafka::connect(kafka, topics.clone(), config.groups.clone(), &config.region)
                .await
                .with_context(|| format!("connecting to Kafka at {}", kafka.bootstrap_servers))?;
            OpenedLog {
                log: Arc::new(layers::stack(log, topics)),
                description: format!("kafka:{}", kafka.bootstrap_servers),
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
            let names: Vec<&str> = regions.regions.keys().map(String::as_str).collect();
            OpenedLog {
                log: Arc::new(Validated::new(router.clone(), topics)),
                description: format!("regions:{}", names.join(",")),
                router: Some(router),
            }
        }
    })
}

/// Runs the gateway until a signal, then drains. Returns once everything is closed.
pub(crate) async fn run(config: Config) -> Result<()> {
    let root = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Before anything counts: every metric from here on is exported.
    let prometheus = http::install_recorder()?;

    let OpenedLog {
        log,
        description: log_description,
        router,
    } = open_log(&config).await?;

    let listener = TcpListener::bind(config.grpc.listen)
        .await
        .with_context(|| {
            format!(
                "binding the gRPC listener on {} (grpc.listen)",
                config.grpc.listen
            )
        })?;
    let grpc_address = listener
        .local_addr()
        .context("reading the gRPC listener's address")?;

    let mqtt = if config.mqtt.enabled {
        let server = courier_mqtt::Server::bind(log.clone(), config.mqtt.clone())
            .await
            .with_context(|| {
                format!(
                    "starting the MQTT endpoint on {} (mqtt.listen)",
                    config.mqtt.listen
                )
            })?;
        let address = server
            .local_addr()
            .context("reading the MQTT listener's address")?;
        let websocket = server
            .websocket_addr()
            .context("reading the MQTT WebSocket listener's address")?;
        Some((server, address, websocket))
    } else {
        None
    };

    let amqp = if config.amqp.enabled {
        let server = courier_amqp::Server::bind(log.clone(), config.amqp.clone())
            .await
            .with_context(|| {
                format!(
                    "starting the AMQP endpoint on {} (amqp.listen)",
                    config.amqp.listen
                )
            })?;
        let address = server
            .local_addr()
            .context("reading the AMQP listener's address")?;
        Some((server, address))
    } else {
        None
    };

    let board = Arc::new(Board::new(&config.region, &log_description, router.clone()));
    let http_listener = if config.http.enabled {
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| {
                format!(
                    "binding the HTTP listener on {} (http.listen)",
                    config.http.listen
                )
            })?;
        let address = listener
            .local_addr()
            .context("reading the HTTP listener's address")?;
        Some((listener, address))
    } else {
        None
    };

    let drain = root.child_token();
    let grpc = GrpcServer {
        log: log.clone(),
        regions: router,
        config: config.grpc.clone(),
        groups: config.groups.clone(),
    };
    let grpc_task = tracker.spawn({
        let (drain, root) = (drain.clone(), root.clone());
        async move {
            let result = grpc.serve(listener, drain).await;
            if let Err(error) = &result {
                tracing::error!(%error, "gRPC server failed; stopping the gateway");
            }
            root.cancel();
            result
        }
    });
    let mut addresses = format!("grpc={grpc_address}");
    if let Some((server, address, websocket)) = mqtt {
        addresses.push_str(&format!(" mqtt={address}"));
        if let Some(websocket) = websocket {
            addresses.push_str(&format!(" mqtt-ws={websocket}"));
        }
        let (drain, root) = (drain.clone(), root.clone());
        tracker.spawn(async move {
            if let Err(error) = server.serve(drain).await {
                tracing::error!(%error, "MQTT server failed; stopping the gateway");
                root.cancel();
            }
        });
    }
    if let Some((server, address)) = amqp {
        addresses.push_str(&format!(" amqp={address}"));
        let (drain, root) = (drain.clone(), root.clone());
        tracker.spawn(async move {
            if let Err(error) = server.serve(drain).await {
                tracing::error!(%error, "AMQP server failed; stopping the gateway");
                root.cancel();
            }
        });
    }
    tracker.close();

    // The HTTP endpoint and the probes outlive the drain: readiness says "draining" until the end.
    let http_stop = CancellationToken::new();
    let probes = tokio::spawn(board::run_probes(
        board.clone(),
        log.clone(),
        prometheus.clone(),
        config.http.probe_interval,
        config.http.lag_interval,
        http_stop.clone(),
    ));
    let http_task = http_listener.map(|(listener, address)| {
        addresses.push_str(&format!(" http={address}"));
        let (board, stop, root) = (board.clone(), http_stop.clone(), root.clone());
        tokio::spawn(async move {
            if let Err(error) = http::serve(listener, prometheus, board, stop).await {
                tracing::error!(
                    error = format!("{error:#}"),
                    "HTTP endpoint failed; stopping the gateway"
                );
                root.cancel();
            }
        })
    });

    // The ready line: tests and operators wait for it; it names the bound addresses.
    println!(
        "courier ready {addresses} log={log_description} region={}",
        config.region
    );
    std::io::stdout()
        .flush()
        .context("writing the ready line")?;
    tracing::info!(%addresses, log = %log_description, "courier is serving");

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
    http_stop.cancel();
    let _ = probes.await;
    if let Some(http_task) = http_task {
        // Idle keep-alive connections (scrapers) must not hold the exit.
        let _ = tokio::time::timeout(HTTP_CLOSE, http_task).await;
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
