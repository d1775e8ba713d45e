//! `courier bench --mqtt --auth-rules N`: what authentication and a policy cost Courier's MQTT
//! endpoint. Two Courier processes run side by side, each on a fresh embedded log: one open (no
//! `[auth]`), one with a users file holding the bench's user and a policy of `N` rules, `N - 1`
//! for made-up users (`devices/<user>/#`) and, last, the bench user's grant (`bench/#`), so a
//! policy read from the top would pay for the whole list. Its clients send the user's name and
//! password in CONNECT. Two workloads, each against both:
//!
//! - new connections (first, on the fresh brokers): every CONNECT carries the right password, so
//!   each is a fresh argon2 verification, at most `hashing_threads` at once (`[auth]`, set
//!   explicitly and printed). Mosquitto, open and with a password file (`mosquitto_passwd`,
//!   PBKDF2-SHA512), is run beside it when both its programs are installed;
//! - QoS 1 publish: the same workload as `courier bench --mqtt`, every PUBLISH authorized on its
//!   topic. The two sides take turns, [`ROUNDS`] times, and each reports its median round, so a
//!   drift of the machine over the run falls on both. Mosquitto does not run it: the question here
//!   is Courier against itself.
//!
//! MQTT 3.1.1 cannot refuse a QoS 1 PUBLISH: a denied one is acknowledged and dropped. So the
//! figures are checked against Courier's own counters (`/metrics`) afterwards: a run in which the
//! policy refused anything, or a login failed, is an error, not a figure.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use courier_gateway::auth::users_file_line;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Broker, Measurement, Workload, new_connections, phase, publish};
use crate::bench::{args::BenchArgs, measure::median, tls::BenchTls};

/// The bench's own user.
const USER: &str = "bench";

/// Turns each side takes at the publish workload.
const ROUNDS: usize = 5;

/// Makes Mosquitto's password files; Debian's `mosquitto` package installs it here.
const MOSQUITTO_PASSWD: &str = "/usr/bin/mosquitto_passwd";

/// The brokers' names in the tables; the ratios find their rows by them.
const COURIER_OPEN: &str = "Courier, open";
const COURIER_USERS: &str = "Courier, users + policy";
const MOSQUITTO_OPEN: &str = "Mosquitto, open";
const MOSQUITTO_PASSWORDS: &str = "Mosquitto, password file";

/// New connections per second against one broker.
struct Connects {
    broker: &'static str,
    measurement: Measurement,
}

/// Runs both workloads and prints the tables and ratios.
pub(crate) async fn run(args: &BenchArgs, rules: usize) -> Result<()> {
    let tls = args.tls.then(BenchTls::new).transpose()?;
    let password = ulid::Ulid::new().to_string();
    let files = tempfile::tempdir().context("creating a temporary directory")?;
    let (config, policy_rules) =
        write_courier_files(files.path(), rules, &password, args.hashing_threads)?;
    let open = Broker::courier_with(COURIER_OPEN, &args.fsync, tls.as_ref(), Vec::new())?;
    let env = vec![("COURIER_CONFIG", config.display().to_string())];
    let authed = Broker::courier_with(COURIER_USERS, &args.fsync, tls.as_ref(), env)?;
    let authed_target = authed.target.as_user(USER, &password);

    let mut connects = Vec::new();
    for (broker, target) in [(&open, &open.target), (&authed, &authed_target)] {
        let measurement = phase(broker, "new connections", new_connections(target, args)).await?;
        broker.settle().await?;
        connects.push(Connects {
            broker: broker.name,
            measurement,
        });
    }

    let (mut open_rounds, mut authed_rounds) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        for (broker, target, rounds) in [
            (&open, &open.target, &mut open_rounds),
            (&authed, &authed_target, &mut authed_rounds),
        ] {
            let measured = phase(
                broker,
                "QoS 1 publish",
                publish(target, args, Workload::Qos1),
            )
            .await?;
            broker.settle().await?;
            rounds.push(measured);
        }
    }
    check_nothing_refused(&authed).await?;
    drop((open, authed));

    connects.extend(mosquitto_connects(args, tls.as_ref(), &password).await?);
    print_results(args, policy_rules, &connects, &open_rounds, &authed_rounds)
}

/// Mosquitto open and with a password file, at the new-connections workload; nothing when
/// Mosquitto or `mosquitto_passwd` is not installed.
async fn mosquitto_connects(
    args: &BenchArgs,
    tls: Option<&BenchTls>,
    password: &str,
) -> Result<Vec<Connects>> {
    if !args.mosquitto.exists() || !Path::new(MOSQUITTO_PASSWD).exists() {
        eprintln!(
            "Mosquitto skipped: {} or {MOSQUITTO_PASSWD} is not installed",
            args.mosquitto.display()
        );
        return Ok(Vec::new());
    }
    let files = tempfile::tempdir().context("creating a temporary directory")?;
    let password_file = files.path().join("passwords");
    // `-b`: the password from the command line; `-c`: a new file. The default hash is
    // PBKDF2-SHA512.
    let made = std::process::Command::new(MOSQUITTO_PASSWD)
        .args(["-b", "-c"])
        .arg(&password_file)
        .args([USER, password])
        .status()
        .context("running mosquitto_passwd")?;
    if !made.success() {
        bail!("mosquitto_passwd failed: {made}");
    }
    let mut connects = Vec::new();
    for password_file in [None, Some(password_file.as_path())] {
        let (name, user) = match password_file {
            None => (MOSQUITTO_OPEN, None),
            Some(_) => (MOSQUITTO_PASSWORDS, Some(USER)),
        };
        let broker = Broker::mosquitto_with(name, &args.mosquitto, tls, password_file)?;
        let target = match user {
            Some(user) => broker.target.as_user(user, password),
            None => broker.target.clone(),
        };
        let measurement = phase(&broker, "new connections", new_connections(&target, args)).await?;
        connects.push(Connects {
            broker: broker.name,
            measurement,
        });
    }
    Ok(connects)
}

/// Courier's config file, naming a users file (the bench's user) and a policy of `rules` rules:
/// `rules - 1` for made-up users, then the bench user's grant, last. Returns the config file and
/// how many rules the policy holds (at least the grant).
fn write_courier_files(
    dir: &Path,
    rules: usize,
    password: &str,
    hashing_threads: usize,
) -> Result<(PathBuf, usize)> {
    let users = dir.join("users");
    let line = users_file_line(USER, password, &[]).map_err(anyhow::Error::msg)?;
    std::fs::write(&users, line).context("writing the users file")?;
    let others = rules.saturating_sub(1);
    let mut policy = String::with_capacity(rules * 96);
    for n in 0..others {
        policy.push_str(&format!(
            "[[rules]]\nwho = [\"user-{n}\"]\nallow = [\"produce\", \"consume\"]\nmqtt = [\"devices/user-{n}/#\"]\n"
        ));
    }
    // The publish workload's topics are `bench/<run>/<publisher>/<k>`.
    policy.push_str(&format!(
        "[[rules]]\nwho = [\"{USER}\"]\nallow = [\"produce\", \"consume\"]\nmqtt = [\"bench/#\"]\n"
    ));
    let policy_file = dir.join("policy.toml");
    std::fs::write(&policy_file, policy).context("writing the policy")?;
    // A config file, as an operator writes one (`COURIER_AUTH__*` variables would serve too).
    let mut auth = toml::Table::new();
    auth.insert("users_file".into(), users.display().to_string().into());
    auth.insert(
        "policy_file".into(),
        policy_file.display().to_string().into(),
    );
    auth.insert(
        "hashing_threads".into(),
        i64::try_from(hashing_threads)?.into(),
    );
    let config = toml::to_string(&toml::Table::from_iter([("auth".into(), auth.into())]))?;
    let config_file = dir.join("courier.toml");
    std::fs::write(&config_file, config).context("writing the config file")?;
    Ok((config_file, others + 1))
}

/// Fails when Courier's counters show a refused login or publish: MQTT 3.1.1 acknowledges a
/// denied QoS 1 PUBLISH, so the publish figure would count messages that were dropped.
async fn check_nothing_refused(broker: &Broker) -> Result<()> {
    let http = broker.http.context("the broker has no HTTP endpoint")?;
    let metrics = scrape(http).await?;
    let denied = counter(&metrics, "courier_auth_denied_total");
    let failed = counter(&metrics, "courier_auth_failures_total");
    if denied > 0.0 || failed > 0.0 {
        bail!(
            "{}: the policy denied {denied} requests and {failed} logins failed; the figures would be wrong",
            broker.name
        );
    }
    Ok(())
}

/// `/metrics` of a Courier HTTP endpoint, over plain HTTP/1.0 (the server closes when done).
async fn scrape(http: std::net::SocketAddr) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(http)
        .await
        .with_context(|| format!("connecting to {http}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers in the /metrics response")?;
    if !head
        .lines()
        .next()
        .is_some_and(|status| status.contains(" 200 "))
    {
        bail!("/metrics answered {:?}", head.lines().next());
    }
    Ok(body.to_owned())
}

/// The sum of a Prometheus counter over all its labels (0 when it was never incremented).
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The parameters, the publish table (each side's median round), the connections table and the
/// ratios.
fn print_results(
    args: &BenchArgs,
    policy_rules: usize,
    connects: &[Connects],
    open_rounds: &[Measurement],
    authed_rounds: &[Measurement],
) -> Result<()> {
    let (open, authed) = (median(open_rounds)?, median(authed_rounds)?);
    let threads = match args.hashing_threads {
        0 => format!(
            "0 (one per core: {})",
            std::thread::available_parallelism().map_or(2, usize::from)
        ),
        n => n.to_string(),
    };
    println!(
        "transport={} messages={} payload={} publishers={} inflight={} new_connections={} connectors={} policy_rules={policy_rules} hashing_threads={threads} publish_rounds={ROUNDS} (median) courier fsync={}",
        if args.tls { "TLS" } else { "TCP" },
        args.records,
        args.record_size,
        args.streams,
        args.mqtt_inflight,
        args.new_connections,
        args.streams,
        args.fsync
    );
    let rates = |rounds: &[Measurement]| -> String {
        rounds
            .iter()
            .map(|m| format!("{:.0}", m.rate()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "QoS 1 publish msg/s per round: open {}; users + policy {}",
        rates(open_rounds),
        rates(authed_rounds)
    );
    let with = format!("users + {policy_rules} policy rules");
    println!();
    println!("| Courier | QoS 1 publish msg/s | MiB/s | p50 ack ms | p99 ack ms |");
    println!("|---|---:|---:|---:|---:|");
    for (side, m) in [("open", open), (with.as_str(), authed)] {
        println!(
            "| {side} | {:.0} | {:.1} | {} | {} |",
            m.rate(),
            m.rate() * args.record_size as f64 / (1 << 20) as f64,
            m.percentile_ms(0.5),
            m.percentile_ms(0.99)
        );
    }
    println!();
    println!("| broker | new connections/s | p50 CONNACK ms | p99 CONNACK ms |");
    println!("|---|---:|---:|---:|");
    for c in connects {
        println!(
            "| {} | {:.0} | {} | {} |",
            c.broker,
            c.measurement.rate(),
            c.measurement.percentile_ms(0.5),
            c.measurement.percentile_ms(0.99)
        );
    }
    println!();
    println!(
        "QoS 1 publish ratio with/without authentication ({policy_rules} rules): {:.2}",
        authed.rate() / open.rate()
    );
    let rate = |name: &str| {
        connects
            .iter()
            .find(|c| c.broker == name)
            .map(|c| c.measurement.rate())
    };
    let ratio = |with: &str, without: &str| rate(with).zip(rate(without)).map(|(a, b)| a / b);
    if let Some(ratio) = ratio(COURIER_USERS, COURIER_OPEN) {
        println!(
            "Courier new connections ratio with/without passwords: {ratio:.2} (hashing_threads={threads})"
        );
    }
    if let Some(ratio) = ratio(MOSQUITTO_PASSWORDS, MOSQUITTO_OPEN) {
        println!("Mosquitto new connections ratio with/without passwords: {ratio:.2}");
    }
    if let Some(ratio) = ratio(COURIER_USERS, MOSQUITTO_PASSWORDS) {
        println!("new connections with passwords, ratio Courier/Mosquitto: {ratio:.2}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use courier_gateway::auth::{
        Principal, Source,
        policy::{Action, Policy, Resource, Subject},
    };

    use super::*;

    #[test]
    fn the_bench_grant_is_the_last_of_the_rules_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let (config, rules) = write_courier_files(dir.path(), 100, "secret", 2).unwrap();
        assert_eq!(rules, 100);
        let config: toml::Table =
            toml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
        assert_eq!(config["auth"]["hashing_threads"].as_integer(), Some(2));
        let policy = Policy::load(&dir.path().join("policy.toml")).unwrap();
        assert_eq!(policy.len(), 100);
        let bench = Principal::new(USER, Vec::new(), Source::Password);
        let subject = Subject {
            principal: &bench,
            client_id: Some("bench-pub-1"),
        };
        let decision = policy.decide(
            subject,
            Action::Produce,
            Resource::MqttTopic("bench/run/0/3"),
        );
        assert!(decision.allowed);
        assert_eq!(decision.rule, Some(100));
        let elsewhere = policy.decide(
            subject,
            Action::Produce,
            Resource::MqttTopic("devices/user-1/x"),
        );
        assert!(!elsewhere.allowed);
    }

    #[test]
    fn a_counter_is_summed_over_its_labels() {
        let metrics = "# TYPE courier_auth_denied_total counter\n\
            courier_auth_denied_total{protocol=\"mqtt\",action=\"produce\"} 3\n\
            courier_auth_denied_total{protocol=\"grpc\",action=\"consume\"} 2\n\
            courier_auth_denied_total_other 7\n";
        assert_eq!(counter(metrics, "courier_auth_denied_total"), 5.0);
        assert_eq!(counter(metrics, "courier_auth_failures_total"), 0.0);
    }
}
