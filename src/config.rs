//! `courier.toml`: the binary composes the sections each crate owns into one config, layered as
//! defaults < config file < `COURIER_*` environment variables < command-line flags.
//!
//! Environment variables name a key by its path with `__` between levels:
//! `COURIER_GRPC__LISTEN=127.0.0.1:6000`, `COURIER_LOG__DATA_DIR=/var/lib/courier`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use courier_gateway::{
    auth::AuthConfig,
    config::{BackendConfig, GroupsConfig, TopicsConfig},
    limits::LimitsConfig,
    telemetry::TracingConfig,
    tls::TlsConfig,
};
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

pub(crate) mod check;

/// The whole configuration of `courier serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Name of the region this gateway runs in, written into every record as `courier-origin`.
    #[serde(default = "Config::default_region")]
    pub(crate) region: String,
    /// `[auth]`: who may connect and what they may do, for every protocol.
    #[serde(default)]
    pub(crate) auth: AuthConfig,
    /// `[grpc]`: the gRPC listener.
    #[serde(default)]
    pub(crate) grpc: courier_grpc::Config,
    /// `[log]`: where records are stored (`kind = "embedded"`).
    #[serde(default)]
    pub(crate) log: BackendConfig,
    /// `[topics]`: topic defaults and limits.
    #[serde(default)]
    pub(crate) topics: TopicsConfig,
    /// `[groups]`: consumer group behaviour.
    #[serde(default)]
    pub(crate) groups: GroupsConfig,
    /// `[mqtt]`: the MQTT endpoint.
    #[serde(default)]
    pub(crate) mqtt: courier_mqtt::Config,
    /// `[amqp]`: the AMQP 1.0 endpoint.
    #[serde(default)]
    pub(crate) amqp: courier_amqp::Config,
    /// `[http]`: health probes, Prometheus metrics and the status page.
    #[serde(default)]
    pub(crate) http: HttpConfig,
    /// `[limits]`: connection limits and quotas, for every protocol.
    #[serde(default)]
    pub(crate) limits: LimitsConfig,
    /// `[shutdown]`: draining on SIGTERM.
    #[serde(default)]
    pub(crate) shutdown: ShutdownConfig,
    /// `[telemetry]`: the log lines' format, and message tracing.
    #[serde(default)]
    pub(crate) telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            region: Self::default_region(),
            auth: AuthConfig::default(),
            grpc: courier_grpc::Config::default(),
            log: BackendConfig::default(),
            topics: TopicsConfig::default(),
            groups: GroupsConfig::default(),
            mqtt: courier_mqtt::Config::default(),
            amqp: courier_amqp::Config::default(),
            http: HttpConfig::default(),
            limits: LimitsConfig::default(),
            shutdown: ShutdownConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Config {
    /// What the types cannot check, section by section; the error names the key.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        self.auth.validate().map_err(anyhow::Error::msg)?;
        self.grpc.validate().map_err(anyhow::Error::msg)?;
        self.groups.validate().map_err(anyhow::Error::msg)?;
        self.mqtt.validate().map_err(anyhow::Error::msg)?;
        self.amqp.validate().map_err(anyhow::Error::msg)?;
        self.limits.validate().map_err(anyhow::Error::msg)?;
        self.telemetry
            .tracing
            .validate()
            .map_err(anyhow::Error::msg)?;
        self.http.validate()
    }

    fn default_region() -> String {
        "local".into()
    }

    /// The log as the ready line and the status page name it: `embedded:<dir>`,
    /// `kafka:<bootstrap servers>`, `regions:<name>,<name>`.
    pub(crate) fn log_description(&self) -> String {
        match &self.log {
            BackendConfig::Embedded(embedded) => {
                format!("embedded:{}", embedded.data_dir.display())
            }
            BackendConfig::Kafka(kafka) => format!("kafka:{}", kafka.bootstrap_servers),
            BackendConfig::Regions(regions) => {
                let names: Vec<&str> = regions.regions.keys().map(String::as_str).collect();
                format!("regions:{}", names.join(","))
            }
        }
    }

    /// Loads the layers. A missing file is an error only when it was named explicitly.
    pub(crate) fn load(
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(defaults()?));
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(Box::new(figment::Error::from(format!(
                        "config file {} does not exist",
                        path.display()
                    ))));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None if Path::new(DEFAULT_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_FILE))
            }
            None => {}
        }
        figment = figment.merge(
            Env::prefixed("COURIER_")
                .split("__")
                // Only keys of this config: COURIER_SERVER and the like belong to the client commands.
                .filter(|key| is_config_key(key.as_str())),
        );
        if let Some(listen) = overrides.grpc_listen {
            figment = figment.merge(Serialized::default("grpc.listen", listen));
        }
        if let Some(listen) = overrides.mqtt_listen {
            figment = figment.merge(Serialized::default("mqtt.listen", listen));
        }
        if let Some(listen) = overrides.amqp_listen {
            figment = figment.merge(Serialized::default("amqp.listen", listen));
        }
        if let Some(listen) = overrides.http_listen {
            figment = figment.merge(Serialized::default("http.listen", listen));
        }
        if let Some(data_dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("log.data_dir", data_dir));
        }
        figment.extract().map_err(Box::new)
    }
}

/// The defaults layer. Of `[log]` it holds only `kind`: the other keys belong to the kind chosen, and
/// each kind's own defaults fill them, so choosing `kind = "kafka"` does not inherit embedded keys.
fn defaults() -> Result<figment::value::Value, Box<figment::Error>> {
    use figment::value::{Dict, Value};
    let mut defaults = Value::serialize(Config::default()).map_err(Box::new)?;
    if let Value::Dict(_, sections) = &mut defaults {
        let log = Dict::from([("kind".to_owned(), Value::from("embedded"))]);
        sections.insert("log".to_owned(), Value::from(log));
    }
    Ok(defaults)
}

/// Read when no `--config` is given and it exists.
const DEFAULT_FILE: &str = "courier.toml";

/// Top-level keys, for filtering the environment (a test checks it names every key of [`Config`]).
const SECTIONS: [&str; 12] = [
    "region",
    "auth",
    "grpc",
    "log",
    "topics",
    "groups",
    "mqtt",
    "amqp",
    "http",
    "limits",
    "shutdown",
    "telemetry",
];

/// Whether an environment key (after `COURIER_` and `__` splitting) names a key of this config. Figment
/// filters before it lowercases, so the comparison ignores case.
fn is_config_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECTIONS
        .iter()
        .any(|section| key == *section || key.starts_with(&format!("{section}.")))
}

/// Flags of `courier serve` that override the config.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    /// `--grpc-listen`.
    pub(crate) grpc_listen: Option<SocketAddr>,
    /// `--mqtt-listen`.
    pub(crate) mqtt_listen: Option<SocketAddr>,
    /// `--amqp-listen`.
    pub(crate) amqp_listen: Option<SocketAddr>,
    /// `--http-listen`.
    pub(crate) http_listen: Option<SocketAddr>,
    /// `--data-dir`.
    pub(crate) data_dir: Option<PathBuf>,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetryConfig {
    /// How log lines are written to stderr: `text` for people, `json` (one object a line, with the
    /// trace id of the message being handled) for log pipelines. `--log-format` overrides it.
    #[serde(default)]
    pub(crate) log_format: LogFormat,
    /// `[telemetry.tracing]`: message spans over OTLP (off by default).
    #[serde(default)]
    pub(crate) tracing: TracingConfig,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpConfig {
    /// Serve the HTTP endpoint: `/healthz`, `/readyz`, `/metrics` and the status page at `/`.
    #[serde(default = "HttpConfig::default_enabled")]
    pub(crate) enabled: bool,
    /// Address of the HTTP endpoint.
    #[serde(default = "HttpConfig::default_listen")]
    pub(crate) listen: SocketAddr,
    /// How often the log is probed (readiness, region state) and traffic sampled.
    #[serde(
        default = "HttpConfig::default_probe_interval",
        with = "humantime_serde"
    )]
    pub(crate) probe_interval: Duration,
    /// How often consumer lag is read: every group described, so on a clock of its own, slower than
    /// the probes, and never holding them up.
    #[serde(default = "HttpConfig::default_lag_interval", with = "humantime_serde")]
    pub(crate) lag_interval: Duration,
    /// Consumer groups exported one by one in `courier_consumer_lag`: the ones furthest behind.
    /// The lag of every other group is summed per topic into one series, `group="(other)"`, so
    /// the series stay few however many groups clients make.
    #[serde(default = "HttpConfig::default_lag_groups")]
    pub(crate) lag_groups: usize,
    /// `[http.tls]`: HTTPS on `tls.listen` beside the plain listener (probes can stay plain), or,
    /// with no `tls.listen`, on `listen` instead. Unset: plain HTTP only.
    #[serde(default)]
    pub(crate) tls: Option<TlsConfig>,
}

impl HttpConfig {
    /// Checks what the types cannot: the TLS table's own rules. Errors name the key.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if let Some(tls) = &self.tls {
            tls.validate_for("http", false)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    fn default_enabled() -> bool {
        true
    }

    fn default_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8080))
    }

    fn default_probe_interval() -> Duration {
        Duration::from_secs(5)
    }

    fn default_lag_interval() -> Duration {
        Duration::from_secs(30)
    }

    fn default_lag_groups() -> usize {
        50
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: Self::default_enabled(),
            listen: Self::default_listen(),
            probe_interval: Self::default_probe_interval(),
            lag_interval: Self::default_lag_interval(),
            lag_groups: Self::default_lag_groups(),
            tls: None,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShutdownConfig {
    /// Longest a drain may take after SIGTERM: streams answer what they hold, subscribers commit, then
    /// the process exits even if some connection is still open. Match Kubernetes'
    /// `terminationGracePeriodSeconds` to it, with a few seconds to spare.
    #[serde(default = "ShutdownConfig::default_grace", with = "humantime_serde")]
    pub(crate) grace: Duration,
}

impl ShutdownConfig {
    fn default_grace() -> Duration {
        Duration::from_secs(20)
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: Self::default_grace(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_can_be_set_from_the_environment() {
        let serde_json::Value::Object(sections) = serde_json::to_value(Config::default()).unwrap()
        else {
            panic!("the config is a table");
        };
        for section in sections.keys() {
            assert!(
                SECTIONS.contains(&section.as_str()),
                "COURIER_{}__* would be ignored: add {section:?} to SECTIONS",
                section.to_uppercase()
            );
        }
    }

    /// Every key of the config is documented in the README's reference.
    #[test]
    fn readme_documents_every_key() -> Result<(), Box<dyn std::error::Error>> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))?;
        let kafka = Config {
            log: BackendConfig::Kafka(courier_gateway::config::KafkaConfig::new("k:9092")),
            ..Config::default()
        };
        let mut missing = Vec::new();
        let mut tables = Vec::new();
        for config in [Config::default(), kafka] {
            match toml::Value::try_from(config)? {
                toml::Value::Table(table) => tables.push(table),
                _ => return Err("a config is not a table".into()),
            }
        }
        for (section, value) in tables.iter().flatten() {
            match value.as_table() {
                Some(keys) => {
                    for key in keys.keys() {
                        let line = format!("`{section}.{key}`");
                        if !readme.contains(&line) && !missing.contains(&line) {
                            missing.push(line);
                        }
                    }
                }
                None if !readme.contains(&format!("`{section}`")) => missing.push(section.clone()),
                None => {}
            }
        }
        assert!(
            missing.is_empty(),
            "README config reference lacks {missing:?}"
        );
        Ok(())
    }

    #[test]
    fn flags_override_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("courier.toml");
        std::fs::write(
            &file,
            "region = \"eu\"\n[grpc]\nlisten = \"127.0.0.1:7000\"\n[topics]\ndefault_partitions = 5\n",
        )?;
        let overrides = Overrides {
            grpc_listen: Some("127.0.0.1:7001".parse()?),
            mqtt_listen: Some("127.0.0.1:7002".parse()?),
            amqp_listen: Some("127.0.0.1:7003".parse()?),
            http_listen: Some("127.0.0.1:7004".parse()?),
            data_dir: Some("/tmp/x".into()),
        };
        let config = Config::load(Some(&file), &overrides)?;
        assert_eq!(config.region, "eu");
        assert_eq!(config.grpc.listen.port(), 7001);
        assert_eq!(config.mqtt.listen.port(), 7002);
        assert_eq!(config.amqp.listen.port(), 7003);
        assert_eq!(config.http.listen.port(), 7004);
        assert_eq!(config.topics.default_partitions, 5);
        let BackendConfig::Embedded(embedded) = &config.log else {
            return Err("the embedded log is the default".into());
        };
        assert_eq!(embedded.data_dir, PathBuf::from("/tmp/x"));
        Ok(())
    }

    /// `kind = "kafka"` takes the Kafka keys, pass-through properties included, and refuses the
    /// embedded ones.
    #[test]
    fn kafka_backend_is_configured_by_kind() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("courier.toml");
        std::fs::write(
            &file,
            "[log]\nkind = \"kafka\"\nbootstrap_servers = \"k1:9092,k2:9092\"\nlinger = \"2ms\"\n\
             [log.properties]\n\"security.protocol\" = \"SASL_SSL\"\n",
        )?;
        let config = Config::load(Some(&file), &Overrides::default())?;
        let BackendConfig::Kafka(kafka) = &config.log else {
            return Err("kind = kafka was not taken".into());
        };
        assert_eq!(kafka.bootstrap_servers, "k1:9092,k2:9092");
        assert_eq!(kafka.linger, std::time::Duration::from_millis(2));
        assert_eq!(
            kafka
                .properties
                .get("security.protocol")
                .map(String::as_str),
            Some("SASL_SSL")
        );
        std::fs::write(
            &file,
            "[log]\nkind = \"kafka\"\nbootstrap_servers = \"k:9092\"\nfsync = \"never\"\n",
        )?;
        assert!(Config::load(Some(&file), &Overrides::default()).is_err());
        Ok(())
    }

    /// Each deploy/ overlay's `courier.toml` (the ConfigMap's block) loads with this loader as the
    /// region router over both regions, its own among them: what the pods will run is a valid config.
    #[test]
    fn deploy_overlays_load() -> Result<(), Box<dyn std::error::Error>> {
        let overlays = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/overlays");
        let dir = tempfile::tempdir()?;
        let mut loaded = 0;
        for overlay in std::fs::read_dir(overlays)? {
            let manifest = std::fs::read_to_string(overlay?.path().join("config.yaml"))?;
            // The block scalar after `courier.toml: |`, indented four spaces.
            let (_, block) = manifest
                .split_once("courier.toml: |\n")
                .ok_or("no courier.toml in the ConfigMap")?;
            let toml: String = block
                .lines()
                .map(|line| line.strip_prefix("    ").unwrap_or(line.trim()))
                .map(|line| format!("{line}\n"))
                .collect();
            let file = dir.path().join(format!("overlay-{loaded}.toml"));
            std::fs::write(&file, toml)?;
            let config = Config::load(Some(&file), &Overrides::default())?;
            let BackendConfig::Regions(regions) = &config.log else {
                return Err(format!("{} is not the region router", file.display()).into());
            };
            assert!(regions.regions.contains_key(&config.region));
            assert_eq!(regions.regions.len(), 2);
            loaded += 1;
        }
        assert_eq!(loaded, 2);
        Ok(())
    }

    /// Keys arrive upper-case (`COURIER_TOPICS__AUTO_CREATE` -> `TOPICS.AUTO_CREATE`); the client's
    /// `COURIER_SERVER` and `COURIER_CONFIG` are not config keys. The end-to-end tests configure the
    /// gateway through these variables, so a filter that dropped them fails there too.
    #[test]
    fn environment_keys_are_recognised_in_any_case() {
        assert!(is_config_key("TOPICS.AUTO_CREATE"));
        assert!(is_config_key("REGION"));
        assert!(is_config_key("log.data_dir"));
        assert!(!is_config_key("SERVER"));
        assert!(!is_config_key("CONFIG"));
        assert!(!is_config_key("TOPICSX.Y"));
    }

    #[test]
    fn unknown_keys_are_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("courier.toml");
        std::fs::write(&file, "[grpc]\nlisten_on = \"x\"\n")?;
        let error = Config::load(Some(&file), &Overrides::default())
            .err()
            .ok_or("accepted an unknown key")?;
        assert!(error.to_string().contains("listen_on"), "{error}");
        Ok(())
    }
}
