//! `courier config check`: loads a config with the loader `courier serve` uses (defaults, the file,
//! `COURIER_*` variables) and the checks it makes before opening anything, then says what the
//! gateway would set up: its log, its listeners by the names the ready line gives them, and the
//! files it reads. Nothing is bound or opened, so a config can be checked where it is written (CI, a
//! Helm chart's test, a container image) away from the Secrets its files come from; `--files` also
//! loads those files with the gateway's own loaders.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use courier_gateway::{
    auth::{Auth, Protected},
    tls::{TlsAcceptor, TlsConfig},
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{Config, Overrides};
use crate::cli::CheckArgs;

/// What a config sets up, as far as can be told without binding or opening anything.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    /// The file read, if any (without `--config`, `./courier.toml` when it exists).
    file: Option<PathBuf>,
    /// `region`.
    region: String,
    /// The log as the ready line's `log=` names it: `embedded:<dir>`, `kafka:<bootstrap>`,
    /// `regions:<a>,<b>`.
    log: String,
    /// Every listener, by the name the ready line gives it (`grpc`, `grpcs`, `mqtt`, `mqtt-ws`,
    /// `mqtts`, `mqtt-wss`, `amqp`, `amqps`, `http`, `https`).
    listeners: BTreeMap<&'static str, SocketAddr>,
    /// The files the gateway reads, each with the key that names it.
    files: Vec<NamedFile>,
    /// `shutdown.grace` in seconds: what a pod's `terminationGracePeriodSeconds` must exceed.
    shutdown_grace_seconds: f64,
    /// The whole config, every default filled in.
    config: Config,
}

/// A file the config names.
#[derive(Debug, Serialize)]
struct NamedFile {
    /// The key naming it (`auth.users_file`, `mqtt.tls.cert`, `grpc.tls.sni[0].key`).
    key: String,
    path: PathBuf,
    /// Whether it exists where the check runs (a pod's Secrets usually do not).
    exists: bool,
}

/// Runs the check and prints the summary; an error says what `courier serve` would refuse.
pub(crate) async fn run(args: CheckArgs) -> Result<()> {
    let summary = check(args.config.as_deref(), args.files).await?;
    if args.format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).context("writing the summary as JSON")?
        );
    } else {
        print!("{}", summary.text());
    }
    Ok(())
}

/// Loads and validates the config in `file` (as `courier serve --config file` would); with
/// `load_files`, reads the files it names too.
pub(crate) async fn check(file: Option<&Path>, load_files: bool) -> Result<Summary> {
    let config = Config::load(file, &Overrides::default())
        .map_err(|error| anyhow::anyhow!("invalid configuration: {error}"))?;
    config.validate().context("invalid configuration")?;
    if load_files {
        load_named_files(&config).await?;
    }
    let file = file.map(Path::to_path_buf).or_else(|| {
        Path::new(super::DEFAULT_FILE)
            .exists()
            .then(|| super::DEFAULT_FILE.into())
    });
    Ok(Summary {
        file,
        region: config.region.clone(),
        log: config.log_description(),
        listeners: listeners(&config).into_iter().collect(),
        files: named_files(&config)
            .into_iter()
            .map(|(key, path)| NamedFile {
                exists: path.exists(),
                key,
                path,
            })
            .collect(),
        shutdown_grace_seconds: config.shutdown.grace.as_secs_f64(),
        config,
    })
}

impl Summary {
    fn text(&self) -> String {
        let mut text = match &self.file {
            Some(file) => format!("{}: valid\n", file.display()),
            None => "no config file: the defaults and COURIER_* variables are valid\n".to_owned(),
        };
        text.push_str(&format!("region: {}\nlog: {}\n", self.region, self.log));
        let listeners: Vec<String> = self
            .listeners
            .iter()
            .map(|(name, address)| format!("{name}={address}"))
            .collect();
        text.push_str(&format!("listeners: {}\n", listeners.join(" ")));
        for file in &self.files {
            let found = if file.exists { "" } else { " (not found here)" };
            text.push_str(&format!(
                "file {}: {}{found}\n",
                file.key,
                file.path.display()
            ));
        }
        text.push_str(&format!(
            "shutdown.grace: {}s\n",
            self.shutdown_grace_seconds
        ));
        text
    }
}

/// One of a front end's listener pairs: the plain listener's name and the TLS one's, the plain
/// address and the TLS table's.
type Pair = (
    &'static str,
    &'static str,
    Option<SocketAddr>,
    Option<SocketAddr>,
);

/// The addresses `courier serve` binds, named as its ready line names them. A `[<front end>.tls]`
/// table with an address of its own adds a TLS listener beside the plain one; without one, the
/// plain addresses speak TLS instead (`TlsConfig::replaces_plain`).
pub(crate) fn listeners(config: &Config) -> Vec<(&'static str, SocketAddr)> {
    let (grpc, mqtt, amqp, http) = (
        config.grpc.tls.as_ref(),
        config.mqtt.tls.as_ref(),
        config.amqp.tls.as_ref(),
        config.http.tls.as_ref(),
    );
    let listen = |tls: Option<&TlsConfig>| tls.and_then(|tls| tls.listen);
    let front_ends: [(bool, Option<&TlsConfig>, Vec<Pair>); 4] = [
        (
            true,
            grpc,
            vec![("grpc", "grpcs", Some(config.grpc.listen), listen(grpc))],
        ),
        (
            config.mqtt.enabled,
            mqtt,
            vec![
                ("mqtt", "mqtts", Some(config.mqtt.listen), listen(mqtt)),
                (
                    "mqtt-ws",
                    "mqtt-wss",
                    config.mqtt.websocket_listen,
                    mqtt.and_then(|tls| tls.websocket_listen),
                ),
            ],
        ),
        (
            config.amqp.enabled,
            amqp,
            vec![("amqp", "amqps", Some(config.amqp.listen), listen(amqp))],
        ),
        (
            config.http.enabled,
            http,
            vec![("http", "https", Some(config.http.listen), listen(http))],
        ),
    ];
    let mut listeners = Vec::new();
    for (enabled, tls, pairs) in front_ends {
        if !enabled {
            continue;
        }
        let replaced = tls.is_some_and(TlsConfig::replaces_plain);
        // Plain (or turned to TLS) first, then the TLS table's own: the servers' order.
        for &(plain, secure, address, _) in &pairs {
            if let Some(address) = address {
                listeners.push((if replaced { secure } else { plain }, address));
            }
        }
        for &(_, secure, _, address) in &pairs {
            if let Some(address) = address {
                listeners.push((secure, address));
            }
        }
    }
    listeners
}

/// Every file the config names, with its key.
fn named_files(config: &Config) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    let auth = &config.auth;
    let optional = [
        ("auth.users_file", auth.users_file.as_ref()),
        ("auth.policy_file", auth.policy_file.as_ref()),
        (
            "auth.jwt.jwks_file",
            auth.jwt.as_ref().and_then(|jwt| jwt.jwks_file.as_ref()),
        ),
        (
            "mqtt.auth.users_file",
            config
                .mqtt
                .auth
                .as_ref()
                .and_then(|a| a.users_file.as_ref()),
        ),
        (
            "amqp.auth.users_file",
            config
                .amqp
                .auth
                .as_ref()
                .and_then(|a| a.users_file.as_ref()),
        ),
    ];
    for (key, path) in optional {
        if let Some(path) = path {
            files.push((key.to_owned(), path.clone()));
        }
    }
    for (front_end, tls) in tls_tables(config) {
        files.push((format!("{front_end}.tls.cert"), tls.cert.clone()));
        files.push((format!("{front_end}.tls.key"), tls.key.clone()));
        for (key, path) in [("client_ca", &tls.client_ca), ("crl", &tls.crl)] {
            if let Some(path) = path {
                files.push((format!("{front_end}.tls.{key}"), path.clone()));
            }
        }
        for (n, sni) in tls.sni.iter().enumerate() {
            files.push((format!("{front_end}.tls.sni[{n}].cert"), sni.cert.clone()));
            files.push((format!("{front_end}.tls.sni[{n}].key"), sni.key.clone()));
        }
    }
    files
}

/// The `[<front end>.tls]` tables of the front ends that run.
fn tls_tables(config: &Config) -> Vec<(&'static str, &TlsConfig)> {
    [
        ("grpc", true, config.grpc.tls.as_ref()),
        ("mqtt", config.mqtt.enabled, config.mqtt.tls.as_ref()),
        ("amqp", config.amqp.enabled, config.amqp.tls.as_ref()),
        ("http", config.http.enabled, config.http.tls.as_ref()),
    ]
    .into_iter()
    .filter_map(|(name, enabled, tls)| tls.filter(|_| enabled).map(|tls| (name, tls)))
    .collect()
}

/// Reads the users, policy and JWKS files and the TLS material as `courier serve` does at start
/// (a `jwks_url` is fetched), then stops the watchers those loaders start.
async fn load_named_files(config: &Config) -> Result<()> {
    let stop = CancellationToken::new();
    // Stops the watchers however this returns.
    let _stop = stop.clone().drop_guard();
    for (front_end, tls) in tls_tables(config) {
        TlsAcceptor::start(front_end, tls, &[], stop.child_token())
            .with_context(|| format!("loading the files of [{front_end}.tls]"))?;
    }
    Auth::start(
        &config.auth,
        Protected::new(Vec::new()),
        &[config.mqtt.auth.as_ref(), config.amqp.auth.as_ref()],
        stop.child_token(),
    )
    .await
    .context("loading the files of [auth]")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Result<Config, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("courier.toml");
        std::fs::write(&file, toml)?;
        Ok(Config::load(Some(&file), &Overrides::default())?)
    }

    fn names(config: &Config) -> Vec<String> {
        listeners(config)
            .into_iter()
            .map(|(name, address)| format!("{name}={address}"))
            .collect()
    }

    #[test]
    fn the_defaults_listen_on_every_protocol() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(
            names(&config("")?),
            [
                "grpc=0.0.0.0:50051",
                "mqtt=0.0.0.0:1883",
                "amqp=0.0.0.0:5672",
                "http=0.0.0.0:8080"
            ]
        );
        Ok(())
    }

    /// A TLS table with an address of its own adds a listener; without one it turns the plain
    /// listeners to TLS, WebSocket included.
    #[test]
    fn tls_tables_add_or_replace_listeners() -> Result<(), Box<dyn std::error::Error>> {
        let config = config(
            r#"
            [grpc.tls]
            listen = "0.0.0.0:50052"
            cert = "/tls/tls.crt"
            key = "/tls/tls.key"
            [mqtt]
            websocket_listen = "0.0.0.0:8083"
            [mqtt.tls]
            cert = "/tls/tls.crt"
            key = "/tls/tls.key"
            [amqp]
            enabled = false
            [http.tls]
            listen = "0.0.0.0:8443"
            cert = "/tls/tls.crt"
            key = "/tls/tls.key"
            sni = [{ names = ["a.example"], cert = "/tls/a.crt", key = "/tls/a.key" }]
            "#,
        )?;
        assert_eq!(
            names(&config),
            [
                "grpc=0.0.0.0:50051",
                "grpcs=0.0.0.0:50052",
                "mqtts=0.0.0.0:1883",
                "mqtt-wss=0.0.0.0:8083",
                "http=0.0.0.0:8080",
                "https=0.0.0.0:8443"
            ]
        );
        let keys: Vec<String> = named_files(&config).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "grpc.tls.cert",
                "grpc.tls.key",
                "mqtt.tls.cert",
                "mqtt.tls.key",
                "http.tls.cert",
                "http.tls.key",
                "http.tls.sni[0].cert",
                "http.tls.sni[0].key"
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn files_are_listed_and_loaded_only_when_asked() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("courier.toml");
        let users = dir.path().join("users");
        std::fs::write(
            &file,
            format!("[auth]\nusers_file = {:?}\n", users.display().to_string()),
        )?;
        let summary = check(Some(&file), false).await?;
        assert_eq!(summary.files.len(), 1);
        assert!(!summary.files[0].exists);
        let missing = check(Some(&file), true)
            .await
            .err()
            .ok_or("a missing users file passed --files")?;
        assert!(format!("{missing:#}").contains("[auth]"), "{missing:#}");
        std::fs::write(&users, "")?;
        assert!(check(Some(&file), true).await?.files[0].exists);
        Ok(())
    }

    /// What `courier serve` refuses after loading (its `validate`), the check refuses too.
    #[tokio::test]
    async fn validation_runs_as_serve_runs_it() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("courier.toml");
        std::fs::write(
            &file,
            "[mqtt.tls]\ncert = \"c\"\nkey = \"k\"\nclient_auth = \"required\"\n",
        )?;
        let error = check(Some(&file), false)
            .await
            .err()
            .ok_or("client_auth without client_ca passed")?;
        assert!(format!("{error:#}").contains("client_ca"), "{error:#}");
        Ok(())
    }
}
