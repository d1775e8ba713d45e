//! The gateway every input is played against, built once per fuzzing process (a fresh log per
//! input would cost more than the input): a current-thread runtime, an embedded log behind the
//! layers the binary composes (as `courier_gateway::testing::embedded`, but without `fdatasync`,
//! which would make every QoS 1 publish wait for the disk), and an MQTT bridge over it that serves
//! anonymous loopback clients. The bridge's limits are small, so that inputs reach them: a receive
//! maximum and in-flight window of 4, 4 topic aliases, 8 KiB packets.
//!
//! The log lives in a temporary directory removed at exit; directories of fuzzing processes that
//! died (crashes) are removed when the next one starts.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use courier_gateway::{
    auth::{Access, Protected},
    config::{EmbeddedConfig, FsyncPolicy, GroupsConfig, TopicsConfig},
    log::{Embedded, layers},
};
use courier_mqtt::{Config, bridge::Bridge, config::Route};
use tokio_util::sync::CancellationToken;

pub struct Gateway {
    pub runtime: tokio::runtime::Runtime,
    pub bridge: Arc<Bridge>,
}

/// Where this process's log lives, and where every fuzzing process's does.
const DIRECTORY_PREFIX: &str = "courier-mqtt-fuzz-";

pub fn gateway() -> &'static Gateway {
    static GATEWAY: OnceLock<Gateway> = OnceLock::new();
    GATEWAY.get_or_init(start)
}

fn start() -> Gateway {
    remove_dead_processes_logs();
    let directory = log_directory(std::process::id());
    std::fs::create_dir_all(&directory).expect("a log directory");
    // SAFETY: registers a function that takes no arguments and touches only a path it builds.
    unsafe { libc::atexit(remove_log_at_exit) };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let bridge = runtime.block_on(async {
        let topics = TopicsConfig::default();
        let embedded = Embedded::open(
            &EmbeddedConfig {
                fsync: FsyncPolicy::Never,
                ..EmbeddedConfig::in_dir(&directory)
            },
            topics.clone(),
            GroupsConfig::default(),
            "fuzz",
        )
        .await
        .expect("the embedded log");
        let log = Arc::new(layers::stack(embedded, &topics));
        let protected =
            Protected::new(["mqtt.sessions", "mqtt.retained", "mqtt.qos2"].map(String::from));
        let config = Config {
            max_packet_size: 8 * 1024,
            receive_maximum: 4,
            max_inflight: 4,
            topic_alias_maximum: 4,
            connect_timeout: Duration::from_secs(2),
            routes: vec![Route {
                filter: "r/#".into(),
                topic: "fuzz.routed".into(),
            }],
            ..Config::default()
        };
        // Never cancelled: the bridge's readers run as long as the process.
        let cancel = CancellationToken::new();
        Bridge::start(log, config, Access::loopback("mqtt", protected), cancel)
            .await
            .expect("the MQTT bridge")
    });
    Gateway { runtime, bridge }
}

fn log_directory(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("{DIRECTORY_PREFIX}{pid}"))
}

extern "C" fn remove_log_at_exit() {
    let _ = std::fs::remove_dir_all(log_directory(std::process::id()));
}

/// Removes the logs of fuzzing processes that are gone (a crash skips `atexit`).
fn remove_dead_processes_logs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(DIRECTORY_PREFIX))
        else {
            continue;
        };
        if !PathBuf::from("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
