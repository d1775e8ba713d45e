//! `courier bench --auth-rules N`: what authentication and a policy cost the gRPC data plane. The
//! same workload (ProduceStream, then Subscribe) runs through two gateways on loopback, each on a
//! fresh embedded store: one open, one with a users file and a policy of `N` rules, one per made-up
//! user, and a last one granting the bench's own user, which presents its password (Basic) on
//! every call. The two sides take turns, [`ROUNDS`] times, each on a fresh store removed before
//! the other starts, which of them goes first alternating, and each side reports its median
//! round, so neither pays for the other's leftovers (a store still flushing) or for a drift of the
//! machine. Both are printed with their ratio.

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use courier_gateway::{
    auth::{Auth, AuthConfig, Protected, users_file_line},
    config::FsyncPolicy,
    log::{Log, TopicSpec},
};
use tokio_util::sync::CancellationToken;

use super::{
    args::BenchArgs,
    grpc::{open_log, through_gateway, through_gateway_as},
    measure::{Measurement, median},
};
use crate::client::Credentials;

/// The bench's own user.
const USER: &str = "bench";

/// Rounds of each side.
const ROUNDS: usize = 5;

/// Runs both sides and prints the table.
pub(super) async fn run(args: &BenchArgs, rules: usize) -> Result<()> {
    let fsync = if args.fsync == "never" {
        FsyncPolicy::Never
    } else {
        FsyncPolicy::Always
    };
    let value = Bytes::from(vec![b'x'; args.record_size]);
    let topic = "bench";

    let files = tempfile::tempdir().context("creating a temporary directory")?;
    let password = ulid::Ulid::new().to_string();
    let config = write_files(files.path(), rules, &password)?;
    let stop = CancellationToken::new();
    let auth = Auth::start(&config, Protected::new([]), &[], stop.clone())
        .await
        .context("starting authentication")?;
    let mut rounds = Rounds::default();
    let bench = Bench {
        fsync,
        topic,
        args,
        value: &value,
        auth: &auth,
        password: &password,
    };
    let measured = async {
        for round in 0..ROUNDS {
            rounds.measure(round, &bench).await?;
        }
        anyhow::Ok(())
    }
    .await;
    // Stopped whether or not a round failed: the users and policy watchers end with it.
    stop.cancel();
    measured?;
    let open_produce = median(&rounds.open_produce)?;
    let authed_produce = median(&rounds.authed_produce)?;
    let open_subscribe = median(&rounds.open_subscribe)?;
    let authed_subscribe = median(&rounds.authed_subscribe)?;

    println!(
        "records={} record_size={} streams={} batch={} pipeline={} partitions={} policy_rules={} rounds={ROUNDS} (median)",
        args.records,
        args.record_size,
        args.streams,
        args.batch,
        args.pipeline,
        args.partitions,
        rules + 1
    );
    for (what, open, authed) in [
        ("produce", &rounds.open_produce, &rounds.authed_produce),
        (
            "subscribe",
            &rounds.open_subscribe,
            &rounds.authed_subscribe,
        ),
    ] {
        let rates = |side: &[Measurement]| {
            side.iter()
                .map(|m| format!("{:.0}", m.rate()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{what} records/s per round: open {}; with authentication {}",
            rates(open),
            rates(authed)
        );
    }
    println!("| workload | gateway | records/s | MiB/s | p50 ack ms | p99 ack ms |");
    println!("|---|---|---:|---:|---:|---:|");
    let with = format!("users + {} policy rules (Basic)", rules + 1);
    for (workload, side, m) in [
        ("produce", "open", open_produce),
        ("produce", with.as_str(), authed_produce),
        ("subscribe", "open", open_subscribe),
        ("subscribe", with.as_str(), authed_subscribe),
    ] {
        row(workload, side, m, args.record_size);
    }
    println!(
        "produce ratio with/without authentication: {:.2}",
        authed_produce.rate() / open_produce.rate()
    );
    println!(
        "subscribe ratio with/without authentication: {:.2}",
        authed_subscribe.rate() / open_subscribe.rate()
    );
    Ok(())
}

/// What every round runs with.
#[derive(Clone, Copy)]
struct Bench<'a> {
    fsync: FsyncPolicy,
    topic: &'a str,
    args: &'a BenchArgs,
    value: &'a Bytes,
    auth: &'a Auth,
    password: &'a str,
}

/// Each side's measurements, a round at a time.
#[derive(Default)]
struct Rounds {
    open_produce: Vec<Measurement>,
    open_subscribe: Vec<Measurement>,
    authed_produce: Vec<Measurement>,
    authed_subscribe: Vec<Measurement>,
}

impl Rounds {
    /// One round: each side through a gateway on a fresh store, removed before the other side
    /// starts; the open side first in even rounds, the authenticated one in odd rounds.
    async fn measure(&mut self, round: usize, bench: &Bench<'_>) -> Result<()> {
        let Bench {
            fsync,
            topic,
            args,
            value,
            auth,
            password,
        } = *bench;
        let open_first = round.is_multiple_of(2);
        for authenticated in [!open_first, open_first] {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let log = fresh_log(dir.path(), fsync, topic, args).await?;
            if authenticated {
                let (produce, subscribe) = through_gateway_as(
                    log,
                    topic,
                    args,
                    value,
                    auth.access("grpc", None),
                    Credentials::basic(USER, password)?,
                )
                .await?;
                self.authed_produce.push(produce);
                self.authed_subscribe.push(subscribe);
            } else {
                let (produce, subscribe) = through_gateway(log, topic, args, value).await?;
                self.open_produce.push(produce);
                self.open_subscribe.push(subscribe);
            }
        }
        Ok(())
    }
}

fn row(workload: &str, side: &str, m: &Measurement, record_size: usize) {
    println!(
        "| {workload} | {side} | {:.0} | {:.1} | {} | {} |",
        m.rate(),
        m.rate() * record_size as f64 / (1 << 20) as f64,
        m.percentile_ms(0.5),
        m.percentile_ms(0.99)
    );
}

/// An embedded log in `dir` with the bench topic; `through_gateway` creates it again over gRPC,
/// which the authenticated side may not do without the admin role, so it exists beforehand.
async fn fresh_log(
    dir: &std::path::Path,
    fsync: FsyncPolicy,
    topic: &str,
    args: &BenchArgs,
) -> Result<Arc<dyn Log>> {
    let log = open_log(dir, fsync).await?;
    log.create_topic(TopicSpec::named(topic).partitions(args.partitions))
        .await?;
    Ok(log)
}

/// The users file (the bench's user) and a policy: `rules` rules for made-up users, then the
/// bench's grant.
fn write_files(dir: &std::path::Path, rules: usize, password: &str) -> Result<AuthConfig> {
    let users = dir.join("users");
    let line = users_file_line(USER, password, &[]).map_err(anyhow::Error::msg)?;
    std::fs::write(&users, line).context("writing the users file")?;
    let mut policy = String::with_capacity(rules * 96);
    for n in 0..rules {
        policy.push_str(&format!(
            "[[rules]]\nwho = [\"user-{n}\"]\nallow = [\"produce\", \"consume\", \"join_group\"]\ntopics = [\"user-{n}-*\"]\ngroups = [\"user-{n}\"]\n"
        ));
    }
    policy.push_str(&format!(
        "[[rules]]\nwho = [\"{USER}\"]\nallow = [\"all\"]\ntopics = [\"*\"]\ngroups = [\"*\"]\n"
    ));
    let policy_file = dir.join("policy.toml");
    std::fs::write(&policy_file, policy).context("writing the policy")?;
    Ok(AuthConfig {
        users_file: Some(users),
        policy_file: Some(policy_file),
        ..AuthConfig::default()
    })
}
