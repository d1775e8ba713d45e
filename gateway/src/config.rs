//! The configuration sections the core owns; each front end's section is in its own crate. Field docs
//! are the user reference (the README's config section repeats them, and a test keeps the two in step).
//! The binary composes these into one `courier.toml`.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// `[log]`: which backend stores the records. `kind` chooses; the other keys belong to that kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// The single-node log on local disk (the default).
    Embedded(EmbeddedConfig),
    /// A Kafka cluster (any broker speaking the Kafka protocol).
    Kafka(KafkaConfig),
    /// Several Kafka clusters, one per region, mirrored by MirrorMaker 2, with failover between them.
    Regions(RegionsConfig),
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self::Embedded(EmbeddedConfig::default())
    }
}

/// When the embedded log forces appended records to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// `fdatasync` once per group commit, before any record of it is acknowledged: survives power loss.
    #[default]
    Always,
    /// Hand records to the OS before acknowledging, never sync: survives a crash of the gateway process,
    /// not of the machine.
    Never,
}

/// `[log]` with `kind = "embedded"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Directory holding the log. Created if missing; one gateway process at a time may use it.
    #[serde(default = "EmbeddedConfig::default_data_dir")]
    pub data_dir: PathBuf,
    /// `always` (sync every group commit before acking) or `never` (OS buffers only).
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// Most bytes gathered into one group commit. Appends that arrive while a commit is syncing wait
    /// for the next one, so one sync acknowledges many appends.
    #[serde(default = "EmbeddedConfig::default_group_commit_bytes")]
    pub group_commit_bytes: usize,
    /// How often retention (by age and by size) is enforced.
    #[serde(
        default = "EmbeddedConfig::default_retention_check_interval",
        with = "humantime_serde"
    )]
    pub retention_check_interval: Duration,
}

impl EmbeddedConfig {
    fn default_data_dir() -> PathBuf {
        PathBuf::from("./data")
    }
    fn default_group_commit_bytes() -> usize {
        8 << 20
    }
    fn default_retention_check_interval() -> Duration {
        Duration::from_secs(30)
    }

    /// The defaults, in another directory.
    pub fn in_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            data_dir: Self::default_data_dir(),
            fsync: FsyncPolicy::default(),
            group_commit_bytes: Self::default_group_commit_bytes(),
            retention_check_interval: Self::default_retention_check_interval(),
        }
    }
}

/// `[log]` with `kind = "kafka"`. Durability is Kafka's: the producer runs with `acks=all` and
/// idempotence, and a client is acknowledged only by the broker's delivery report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Brokers to bootstrap from, comma-separated `host:port`.
    pub bootstrap_servers: String,
    /// librdkafka properties given to every client the gateway makes (producer, consumers, admin):
    /// `security.protocol`, `sasl.*`, `ssl.*`, `client.rack`, ... Written as a TOML table
    /// (`[log.properties]` with `"sasl.mechanism" = "SCRAM-SHA-512"`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the producer only; they override `properties` and the settings below.
    /// `acks` and `enable.idempotence` cannot be weakened here.
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties for consumers only; they override `properties` and the settings below.
    /// Offset management (`enable.auto.commit`, `enable.auto.offset.store`) cannot be changed here.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[serde(default = "KafkaConfig::default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// Largest batch of records sent to one partition at once, in bytes (`batch.size`).
    #[serde(default = "KafkaConfig::default_batch_bytes")]
    pub batch_bytes: usize,
    /// Compression of produced batches: `none`, `gzip`, `lz4`, `snappy` (`compression.codec`).
    #[serde(default = "KafkaConfig::default_compression")]
    pub compression: String,
    /// Longest a produced record may wait for the broker's acknowledgement, retries included
    /// (`message.timeout.ms`). After it the client gets UNAVAILABLE and may retry.
    #[serde(
        default = "KafkaConfig::default_message_timeout",
        with = "humantime_serde"
    )]
    pub message_timeout: Duration,
    /// Longest a metadata, offset or admin request may take.
    #[serde(
        default = "KafkaConfig::default_request_timeout",
        with = "humantime_serde"
    )]
    pub request_timeout: Duration,
    /// A consumer that sends no heartbeat for this long loses its partitions (`session.timeout.ms`).
    #[serde(
        default = "KafkaConfig::default_session_timeout",
        with = "humantime_serde"
    )]
    pub session_timeout: Duration,
    /// Replication factor of topics the gateway creates; -1 takes the broker's default.
    #[serde(default = "KafkaConfig::default_replication_factor")]
    pub replication_factor: i32,
}

impl KafkaConfig {
    fn default_linger() -> Duration {
        Duration::from_millis(5)
    }
    fn default_batch_bytes() -> usize {
        1 << 20
    }
    fn default_compression() -> String {
        "none".into()
    }
    fn default_message_timeout() -> Duration {
        Duration::from_secs(30)
    }
    fn default_request_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_session_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_replication_factor() -> i32 {
        -1
    }

    /// The defaults, against these brokers.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            linger: Self::default_linger(),
            batch_bytes: Self::default_batch_bytes(),
            compression: Self::default_compression(),
            message_timeout: Self::default_message_timeout(),
            request_timeout: Self::default_request_timeout(),
            session_timeout: Self::default_session_timeout(),
            replication_factor: Self::default_replication_factor(),
        }
    }
}

/// Which region takes traffic while every region is healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RegionMode {
    /// Every gateway, wherever it runs, writes to and reads from the primary region.
    #[default]
    ActivePassive,
    /// Every gateway writes to and reads from its own region (the top-level `region`).
    ActiveActive,
}

/// How MirrorMaker 2 names a topic mirrored from another region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationPolicyKind {
    /// `DefaultReplicationPolicy`: topic `T` of region `a` is `a.T` in the other regions.
    #[default]
    Default,
    /// `IdentityReplicationPolicy`: the mirror keeps the name (one-way setups only).
    Identity,
}

/// `[log]` with `kind = "regions"`: one Kafka cluster per region, MirrorMaker 2 between them, and the
/// gateway moving traffic to another region when one is lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionsConfig {
    /// `active-passive` (all traffic to the primary) or `active-active` (each gateway to its own region).
    #[serde(default)]
    pub mode: RegionMode,
    /// The region that takes traffic in active-passive mode while it is healthy. Empty: the gateway's
    /// own `region`.
    #[serde(default)]
    pub primary: String,
    /// The order regions are failed over to after the preferred one; regions not named follow in
    /// alphabetical order.
    #[serde(default)]
    pub failover_order: Vec<String>,
    /// MirrorMaker 2's replication policy: `default` (remote topic `<region><separator><topic>`) or
    /// `identity`.
    #[serde(default)]
    pub replication_policy: ReplicationPolicyKind,
    /// Separator of the default replication policy (`replication.policy.separator`).
    #[serde(default = "RegionsConfig::default_replication_separator")]
    pub replication_separator: String,
    /// How often each region is probed (metadata request, canary produce and read back).
    #[serde(
        default = "RegionsConfig::default_probe_interval",
        with = "humantime_serde"
    )]
    pub probe_interval: Duration,
    /// A probe slower than this fails.
    #[serde(
        default = "RegionsConfig::default_probe_timeout",
        with = "humantime_serde"
    )]
    pub probe_timeout: Duration,
    /// Failed probes (or produce failures) in a row that take a region from SUSPECT to DOWN. The
    /// first failure only makes it SUSPECT, which moves no traffic.
    #[serde(default = "RegionsConfig::default_down_after")]
    pub down_after: u32,
    /// How long a region that was DOWN must answer every probe (RECOVERING) before it is HEALTHY again
    /// and traffic fails back to it. A failure meanwhile restarts the wait.
    #[serde(default = "RegionsConfig::default_hold_down", with = "humantime_serde")]
    pub hold_down: Duration,
    /// On fail-back, how long after producers the consumer groups follow, so MirrorMaker 2 can copy
    /// what was written meanwhile and checkpoint the groups' positions.
    #[serde(
        default = "RegionsConfig::default_fail_back_consumer_delay",
        with = "humantime_serde"
    )]
    pub fail_back_consumer_delay: Duration,
    /// Topic each region's canary records are written to and read back from. MirrorMaker 2 mirrors
    /// it like any topic: the copies say how far behind each region the others are.
    #[serde(default = "RegionsConfig::default_canary_topic")]
    pub canary_topic: String,
    /// A region whose newest copy of another region's canary is older than this (or that has none)
    /// is stale in the status, and a stale standby is named in `/readyz`'s answer.
    #[serde(
        default = "RegionsConfig::default_replication_stale_after",
        with = "humantime_serde"
    )]
    pub replication_stale_after: Duration,
    /// How often each region's MirrorMaker 2 checkpoints are read against the consumer groups'
    /// commits in the other regions (the records a crash would deliver again). Each reading lists
    /// and describes every group of the other regions; `0s` switches it off.
    #[serde(
        default = "RegionsConfig::default_checkpoint_interval",
        with = "humantime_serde"
    )]
    pub checkpoint_interval: Duration,
    /// The regions: `[log.regions.<name>]` with the keys of `kind = "kafka"` (`bootstrap_servers`,
    /// `properties`, ...).
    pub regions: BTreeMap<String, KafkaConfig>,
}

impl RegionsConfig {
    fn default_replication_separator() -> String {
        ".".into()
    }
    fn default_probe_interval() -> Duration {
        Duration::from_secs(1)
    }
    fn default_probe_timeout() -> Duration {
        Duration::from_secs(1)
    }
    fn default_down_after() -> u32 {
        3
    }
    fn default_hold_down() -> Duration {
        Duration::from_secs(30)
    }
    fn default_fail_back_consumer_delay() -> Duration {
        Duration::from_secs(5)
    }
    fn default_canary_topic() -> String {
        "courier.canary".into()
    }
    fn default_replication_stale_after() -> Duration {
        Duration::from_secs(30)
    }
    fn default_checkpoint_interval() -> Duration {
        Duration::from_secs(30)
    }

    /// The defaults, over these regions.
    pub fn new(regions: BTreeMap<String, KafkaConfig>) -> Self {
        Self {
            mode: RegionMode::default(),
            primary: String::new(),
            failover_order: Vec::new(),
            replication_policy: ReplicationPolicyKind::default(),
            replication_separator: Self::default_replication_separator(),
            probe_interval: Self::default_probe_interval(),
            probe_timeout: Self::default_probe_timeout(),
            down_after: Self::default_down_after(),
            hold_down: Self::default_hold_down(),
            fail_back_consumer_delay: Self::default_fail_back_consumer_delay(),
            canary_topic: Self::default_canary_topic(),
            replication_stale_after: Self::default_replication_stale_after(),
            checkpoint_interval: Self::default_checkpoint_interval(),
            regions,
        }
    }
}

/// `[topics]`: defaults and limits for topics, whatever the backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Create a topic on first produce or subscribe when it does not exist. Off: such requests fail
    /// with NOT_FOUND and a hint to create the topic.
    #[serde(default = "TopicsConfig::default_auto_create")]
    pub auto_create: bool,
    /// Topics one caller (a principal, or an anonymous client by its client id or address) may
    /// create by naming them in a minute from its first, on each replica; the request that would
    /// create one more is refused (gRPC RESOURCE_EXHAUSTED, AMQP `amqp:resource-limit-exceeded`,
    /// MQTT 5 0x97) until the minute is over. Only topics made count (an attempt that failed, or
    /// found the topic made meanwhile, does not); topics made with the Admin service's
    /// CreateTopic are not counted. 0 is no limit.
    #[serde(default = "TopicsConfig::default_auto_create_per_minute")]
    pub auto_create_per_minute: u32,
    /// Partitions of a topic created without a count.
    #[serde(default = "TopicsConfig::default_partitions")]
    pub default_partitions: u32,
    /// Retention by age of a topic created without one; "0s" keeps records forever.
    #[serde(default = "TopicsConfig::default_retention", with = "humantime_serde")]
    pub default_retention: Duration,
    /// Retention by size per partition (bytes) of a topic created without one; 0 is unlimited.
    #[serde(default)]
    pub default_retention_bytes: u64,
    /// Largest record accepted (key + value + headers, bytes).
    #[serde(default = "TopicsConfig::default_max_record_bytes")]
    pub max_record_bytes: usize,
}

impl TopicsConfig {
    fn default_auto_create() -> bool {
        true
    }
    fn default_partitions() -> u32 {
        3
    }
    fn default_auto_create_per_minute() -> u32 {
        120
    }
    fn default_retention() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    fn default_max_record_bytes() -> usize {
        1 << 20
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            auto_create: Self::default_auto_create(),
            auto_create_per_minute: Self::default_auto_create_per_minute(),
            default_partitions: Self::default_partitions(),
            default_retention: Self::default_retention(),
            default_retention_bytes: 0,
            max_record_bytes: Self::default_max_record_bytes(),
        }
    }
}

/// Most records a subscriber may hold unacknowledged, whatever the config says (the hard bound
/// `groups.max_in_flight` is checked against, and the log checks every subscription against).
pub const MAX_IN_FLIGHT: usize = 100_000;

/// `[groups]`: consumer group behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsConfig {
    /// How often a subscriber commits its acknowledged prefix (also committed when it leaves or loses a
    /// partition). A crash redelivers at most this much acknowledged-but-uncommitted work.
    #[serde(
        default = "GroupsConfig::default_commit_interval",
        with = "humantime_serde"
    )]
    pub commit_interval: Duration,
    /// `max_in_flight` of a subscription that does not set one (lowered to `max_in_flight` too).
    #[serde(default = "GroupsConfig::default_default_max_in_flight")]
    pub default_max_in_flight: usize,
    /// Most `max_in_flight` a subscription may have: a larger request is lowered to this (not
    /// refused). Each record in flight is held in the gateway's memory until acknowledged.
    #[serde(default = "GroupsConfig::default_max_in_flight")]
    pub max_in_flight: usize,
}

impl GroupsConfig {
    fn default_commit_interval() -> Duration {
        Duration::from_secs(1)
    }
    fn default_default_max_in_flight() -> usize {
        1000
    }
    fn default_max_in_flight() -> usize {
        10_000
    }

    /// Checks what the types cannot: both windows 1 to
    /// [`MAX_IN_FLIGHT`]. Errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("max_in_flight", self.max_in_flight),
            ("default_max_in_flight", self.default_max_in_flight),
        ] {
            if value == 0 || value > MAX_IN_FLIGHT {
                return Err(format!(
                    "groups.{key} must be 1 to {MAX_IN_FLIGHT}, not {value}"
                ));
            }
        }
        Ok(())
    }

    /// The window a subscriber gets when it asks for `requested` records in flight (0: not
    /// said): what it asked for, or the default, lowered to `max_in_flight`.
    pub fn window(&self, requested: usize) -> usize {
        match requested {
            0 => self.default_max_in_flight,
            asked => asked,
        }
        .min(self.max_in_flight)
    }
}

impl Default for GroupsConfig {
    fn default() -> Self {
        Self {
            commit_interval: Self::default_commit_interval(),
            default_max_in_flight: Self::default_default_max_in_flight(),
            max_in_flight: Self::default_max_in_flight(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribers_window_is_lowered_to_the_cap_never_refused() {
        let groups = GroupsConfig {
            default_max_in_flight: 1000,
            max_in_flight: 10,
            ..GroupsConfig::default()
        };
        assert_eq!(groups.window(1_000_000), 10);
        assert_eq!(groups.window(7), 7);
        assert_eq!(groups.window(0), 10, "the default is held to the cap too");
        assert_eq!(GroupsConfig::default().window(0), 1000);
        assert!(groups.validate().is_ok());
    }

    #[test]
    fn windows_past_the_logs_bound_are_refused_naming_the_key() {
        let groups = GroupsConfig {
            max_in_flight: MAX_IN_FLIGHT + 1,
            ..GroupsConfig::default()
        };
        let error = groups.validate().err().unwrap_or_default();
        assert!(error.contains("groups.max_in_flight"), "{error}");
        let groups = GroupsConfig {
            default_max_in_flight: 0,
            ..GroupsConfig::default()
        };
        let error = groups.validate().err().unwrap_or_default();
        assert!(error.contains("groups.default_max_in_flight"), "{error}");
    }
}
