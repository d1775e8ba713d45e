//! `courier bench`'s options.

use clap::Args;

/// `courier bench` options.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Records to produce (and read back) per side.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) records: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub(crate) record_size: usize,
    /// Concurrent producer streams.
    #[arg(long, default_value_t = 4)]
    pub(crate) streams: usize,
    /// Records per produce request.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch: usize,
    /// Requests in flight per stream.
    #[arg(long, default_value_t = 8)]
    pub(crate) pipeline: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    pub(crate) partitions: u32,
    /// fsync policy of the embedded logs: always or never.
    #[arg(long, default_value = "always", value_parser = ["always", "never"])]
    pub(crate) fsync: String,
    /// Measure against this Kafka cluster (`host:port,...`) instead of the embedded log; `mock`:
    /// librdkafka's mock cluster, started in the bench process.
    #[arg(long)]
    pub(crate) kafka: Option<String>,
    /// With `--kafka`: compare a gateway over the plain Kafka backend with one over the region router,
    /// whose standby region is the Kafka cluster here (see tools/src/bench/regions.rs); with
    /// `--kafka mock`, `mock`: a second mock cluster.
    #[arg(long, requires = "kafka")]
    pub(crate) regions: Option<String>,
    /// gRPC mode: compare a gateway without authentication to one with a users file and a policy
    /// of this many rules for made-up users plus one for the bench's user, which sends its
    /// password (Basic) on every call (see tools/src/bench/auth.rs). MQTT mode: compare an open
    /// Courier to one with a users file and a policy of this many rules, the bench user's grant
    /// last, at QoS 1 publish and new connections (see tools/src/bench/mqtt/auth.rs).
    #[arg(long, conflicts_with_all = ["kafka", "amqp"])]
    pub(crate) auth_rules: Option<usize>,
    /// What tracing messages costs: `courier serve` with `[telemetry.tracing]` on (every message
    /// sampled unless `--sampling-ratio` says less, spans exported to an OTLP receiver in the
    /// bench) against the same with tracing off, at gRPC ProduceStream, or with `--mqtt` at QoS 1
    /// publish (see tools/src/bench/tracing.rs).
    #[arg(long, conflicts_with_all = ["kafka", "amqp", "auth_rules", "tls"])]
    pub(crate) tracing: bool,
    /// With `--tracing`: the traced side's `sampling_ratio` (share of new traces recorded).
    #[arg(long, default_value_t = 1.0, requires = "tracing")]
    pub(crate) sampling_ratio: f64,
    /// With `--tracing`: another `courier` binary (a build from before tracing, say) run as a third
    /// side with its default config, to compare tracing off with it.
    #[arg(long, requires = "tracing")]
    pub(crate) baseline: Option<std::path::PathBuf>,
    /// MQTT mode with `--auth-rules`: the authenticated Courier's `[auth] hashing_threads`, the
    /// argon2 checks it runs at once (0: one per core).
    #[arg(long, default_value_t = 2, requires = "auth_rules")]
    pub(crate) hashing_threads: usize,
    /// Leave the brokers and the load where the scheduler puts them. By default, with two cores or
    /// more, the modes that start brokers as processes (`--mqtt`, `--amqp`, `--tracing`, and the
    /// default mode, whose gateway is `courier serve` on the embedded log or on `--kafka`'s
    /// cluster) run each broker alone on the last core and the load on the others; the default
    /// mode's embedded direct side runs on the brokers' core too.
    #[arg(long)]
    pub(crate) no_pin: bool,
    /// A librdkafka producer property (`KEY=VALUE`, repeatable), given to both sides alike.
    #[arg(long = "producer-property", value_parser = parse_property)]
    pub(crate) producer_properties: Vec<(String, String)>,
    /// A librdkafka consumer property (`KEY=VALUE`, repeatable), given to both sides alike.
    #[arg(long = "consumer-property", value_parser = parse_property)]
    pub(crate) consumer_properties: Vec<(String, String)>,
    /// MQTT mode: Courier's MQTT endpoint (embedded) against Mosquitto; `records` messages of
    /// `record_size` bytes from `streams` publishers (see tools/src/bench/mqtt.rs).
    #[arg(long)]
    pub(crate) mqtt: bool,
    /// MQTT mode: QoS 1 messages a publisher keeps unacknowledged.
    #[arg(long, default_value_t = 100)]
    pub(crate) mqtt_inflight: u16,
    /// MQTT mode: messages of the QoS 2 workload (persistent sessions), from `streams` publishers.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) qos2_messages: usize,
    /// MQTT mode: subscribers of the fan-out workload.
    #[arg(long, default_value_t = 100)]
    pub(crate) subscribers: usize,
    /// MQTT mode: messages published to the fan-out subscribers.
    #[arg(long, default_value_t = 1000)]
    pub(crate) fanout_messages: usize,
    /// MQTT mode: clients held connected, each subscribed to command topics of its own, while memory
    /// is measured and commands are sent to them.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// MQTT mode: commands sent to the held clients, one client after another.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) commands: usize,
    /// Over TLS, with a certificate made for the run. gRPC mode: the gateway's gRPC port and its
    /// client (the in-process side stays as it is). MQTT mode: every load client, and both brokers
    /// (Courier's `[mqtt.tls]`, a Mosquitto TLS listener).
    #[arg(long)]
    pub(crate) tls: bool,
    /// MQTT mode: connections of the new-connections workload (each connects, gets its CONNACK and
    /// disconnects; `streams` at a time).
    #[arg(long, default_value_t = 2000)]
    pub(crate) new_connections: usize,
    /// MQTT mode: the Mosquitto broker to compare with.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub(crate) mosquitto: std::path::PathBuf,
    /// Scaling curves: throughput and p99 ack latency at each of `--scaling-streams` and
    /// `--scaling-sizes`, each point on fresh brokers: gRPC against the in-process store, or with
    /// `--mqtt` QoS 1 publish against Mosquitto (see tools/src/bench/scaling.rs).
    #[arg(long, conflicts_with_all = ["kafka", "amqp", "auth_rules", "tracing", "tls"])]
    pub(crate) scaling: bool,
    /// With `--scaling`: the concurrent streams (gRPC) or clients (MQTT) of each point.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,256,4096",
        requires = "scaling"
    )]
    pub(crate) scaling_streams: Vec<usize>,
    /// With `--scaling`: the record sizes in bytes of each point.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,1024,65536",
        requires = "scaling"
    )]
    pub(crate) scaling_sizes: Vec<usize>,
    /// AMQP mode: Courier's AMQP 1.0 endpoint (embedded) against RabbitMQ's AMQP 1.0 plugin; `records`
    /// messages of `record_size` bytes from `streams` senders, read back by one receiver (see
    /// tools/src/bench/amqp.rs).
    #[arg(long)]
    pub(crate) amqp: bool,
    /// AMQP mode: unsettled messages a sender keeps in flight.
    #[arg(long, default_value_t = 100)]
    pub(crate) amqp_window: usize,
    /// AMQP mode: the RabbitMQ server to compare with (run as the current user, not through Debian's
    /// wrapper, so it stops with the benchmark).
    #[arg(long, default_value = "/usr/lib/rabbitmq/bin/rabbitmq-server")]
    pub(crate) rabbitmq: std::path::PathBuf,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}
