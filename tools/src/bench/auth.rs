//! `courier bench --auth-rules N`: what authentication and a policy cost the gRPC data plane. The
//! same workload (ProduceStream, then Subscribe) runs through two gateways on loopback, each on a
//! fresh embedded store: one open, one with a users file and a policy of `N` rules, one per made-up
//! user, and a last one granting the bench's own user, which presents its password (Basic) on
//! every call. Both are printed with their ratio.

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
    measure::Measurement,
};
use crate::client::Credentials;

/// The bench's own user.
const USER: &str = "bench";

/// Runs both sides and prints the table.
pub(super) async fn run(args: &BenchArgs, rules: usize) -> Result<()> {
    let fsync = if args.fsync == "never" {
        FsyncPolicy::Never
    } else {
        FsyncPolicy::Always
    };
    let value = Bytes::from(vec![b'x'; args.record_size]);
    let topic = "bench";

    let open_dir = tempfile::tempdir().context("creating a temporary directory")?;
    let open = fresh_log(open_dir.path(), fsync, topic, args).await?;
    let (open_produce, open_subscribe) = through_gateway(open, topic, args, &value).await?;

    let files = tempfile::tempdir().context("creating a temporary directory")?;
    let password = ulid::Ulid::new().to_string();
    let config = write_files(files.path(), rules, &password)?;
    let stop = CancellationToken::new();
    let auth = Auth::start(&config, Protected::new([]), &[], stop.clone())
        .await
        .context("starting authentication")?;
    let authed_dir = tempfile::tempdir().context("creating a temporary directory")?;
    let authed = fresh_log(authed_dir.path(), fsync, topic, args).await?;
    let measured = through_gateway_as(
        authed,
        topic,
        args,
        &value,
        auth.access("grpc", None),
        Credentials::basic(USER, &password)?,
    )
    .await;
    stop.cancel();
    let (authed_produce, authed_subscribe) = measured?;

    println!(
        "records={} record_size={} streams={} batch={} pipeline={} partitions={} policy_rules={}",
        args.records,
        args.record_size,
        args.streams,
        args.batch,
        args.pipeline,
        args.partitions,
        rules + 1
    );
    println!("| workload | gateway | records/s | MiB/s | p50 ack ms | p99 ack ms |");
    println!("|---|---|---:|---:|---:|---:|");
    let with = format!("users + {} policy rules (Basic)", rules + 1);
    for (workload, side, m) in [
        ("produce", "open", &open_produce),
        ("produce", with.as_str(), &authed_produce),
        ("subscribe", "open", &open_subscribe),
        ("subscribe", with.as_str(), &authed_subscribe),
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
