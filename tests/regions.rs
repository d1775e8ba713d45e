//! Region failover end to end: two tansu processes are two regions, test replicators copy between
//! them in MirrorMaker 2's formats (`tests/common/replicator.rs`), and the real `courier` binary
//! routes over both (`log.kind = "regions"`). The primary broker process is killed mid-stream and
//! started again; the tests measure what clients see and check nothing acknowledged is lost beyond the
//! replication lag at the moment of the kill.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use common::{
    BoxError, DEADLINE, Gateway, SubscribeStream, TestResult, replicator::Replicator,
    start_in_group,
};
use courier_gateway::proto::v1::{self as pb, admin_client::AdminClient};
use courier_testkit::Tansu;
use tonic::transport::Channel;

const TOPIC: &str = "orders";
const GROUP: &str = "billing";
/// Acks reaching the client this soon after the kill were given by the killed region (see the test).
const KILL_SETTLE: Duration = Duration::from_secs(1);

/// A gateway config over regions `a` and `b` (tansu needs one record per produced batch, see
/// gateway/tests/kafka.rs). Defaults apart from a hold-down short enough for a test.
fn regions_config(local: &str, mode: &str, a: &Tansu, b: &Tansu, hold_down: &str) -> String {
    let region = |name: &str, broker: &Tansu| {
        format!(
            "[log.regions.{name}]\nbootstrap_servers = \"{}\"\nreplication_factor = 1\n\
             session_timeout = \"6s\"\n\
             [log.regions.{name}.producer_properties]\n\"batch.num.messages\" = \"1\"\n",
            broker.bootstrap()
        )
    };
    format!(
        "region = \"{local}\"\n[log]\nkind = \"regions\"\nmode = \"{mode}\"\nprimary = \"a\"\n\
         hold_down = \"{hold_down}\"\nfail_back_consumer_delay = \"2s\"\n{}{}",
        region("a", a),
        region("b", b)
    )
}

/// What the producer got acknowledged: courier-id, when it was sent, when it was acknowledged.
type Acked = Arc<Mutex<Vec<(String, Instant, Instant)>>>;
/// What the consumer got: courier-id, topic, origin, when.
type Delivered = Arc<Mutex<Vec<(String, String, String, Instant)>>>;

fn snapshot<T: Clone>(list: &Arc<Mutex<Vec<T>>>) -> Vec<T> {
    list.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Produces one record per request, one after another, recording each acknowledgement, until
/// `stop`. A failed request is retried as a new record (a real client would do the same).
fn spawn_producer(
    gateway: &Gateway,
    acked: Acked,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let url = gateway.url();
    tokio::spawn(async move {
        let mut client = pb::streams_client::StreamsClient::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        let mut n = 0_u64;
        let mut failing = false;
        while !stop.is_cancelled() {
            n += 1;
            let sent = Instant::now();
            let request = pb::ProduceRequest {
                topic: TOPIC.into(),
                records: vec![common::record(
                    Some(&format!("k{}", n % 7)),
                    &format!("v{n}"),
                )],
                request_id: n,
            };
            match tokio::time::timeout(Duration::from_secs(60), client.produce(request)).await {
                Ok(Ok(response)) => {
                    failing = false;
                    let now = Instant::now();
                    let mut acked = acked.lock().unwrap_or_else(PoisonError::into_inner);
                    for ack in response.into_inner().acks {
                        acked.push((ack.courier_id, sent, now));
                    }
                }
                Ok(Err(status)) => {
                    if !failing {
                        eprintln!("produce v{n} failed ({status}); new records follow");
                    }
                    failing = true;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => return Err(format!("produce v{n} hung for 60 s")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })
}

/// Reads in `GROUP` and acknowledges everything, resubscribing when the stream ends.
fn spawn_consumer(
    gateway: &Gateway,
    delivered: Delivered,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let url = gateway.url();
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            let Ok(mut client) = pb::streams_client::StreamsClient::connect(url.clone()).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Ok(mut stream) =
                SubscribeStream::open(&mut client, start_in_group(TOPIC, GROUP, 100)).await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    batch = stream.next_records(Duration::from_secs(1)) => match batch {
                        Ok(Some(records)) => {
                            let now = Instant::now();
                            {
                                let mut delivered = delivered.lock().unwrap_or_else(PoisonError::into_inner);
                                for record in &records {
                                    delivered.push((record.courier_id.clone(), record.topic.clone(), record.origin.clone(), now));
                                }
                            }
                            if stream.ack(&records).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => continue,
                        Err(status) => {
                            eprintln!("subscription ended ({status}); subscribing again");
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    })
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> TestResult {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn regions_status(admin: &mut AdminClient<Channel>) -> Result<pb::RegionsStatus, BoxError> {
    Ok(admin
        .list_regions(pb::ListRegionsRequest {})
        .await?
        .into_inner())
}

/// Whether writes and reads both go to `region`.
async fn traffic_on(admin: &mut AdminClient<Channel>, region: &str) -> bool {
    regions_status(admin).await.is_ok_and(|status| {
        status
            .regions
            .iter()
            .any(|r| r.name == region && r.writes && r.reads)
    })
}

async fn wait_for_traffic_on(
    admin: &mut AdminClient<Channel>,
    region: &str,
    limit: Duration,
) -> TestResult {
    let deadline = Instant::now() + limit;
    while !traffic_on(admin, region).await {
        if Instant::now() > deadline {
            return Err(format!(
                "traffic did not move to {region} within {limit:?}: {:?}",
                regions_status(admin).await?
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_passive_fails_over_and_back_with_nothing_copied_lost() -> TestResult {
    let mut a = Tansu::start()?;
    let b = Tansu::start()?;
    let a_to_b = Replicator::start("a", &a.bootstrap(), &b.bootstrap(), &[TOPIC], &[GROUP]);
    let b_to_a = Replicator::start("b", &b.bootstrap(), &a.bootstrap(), &[TOPIC], &[GROUP]);
    let dir = tempfile::tempdir()?;
    let gateway = Gateway::start_with_config(
        &dir.path().join("gateway"),
        &regions_config("a", "active-passive", &a, &b, "10s"),
        &[],
    )?;
    let mut admin = gateway.admin().await?;
    wait_for_traffic_on(&mut admin, "a", DEADLINE).await?;

    let acked: Acked = Arc::default();
    let delivered: Delivered = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let stop_consumer = tokio_util::sync::CancellationToken::new();
    let producer = spawn_producer(&gateway, acked.clone(), stop.clone());
    let consumer = spawn_consumer(&gateway, delivered.clone(), stop_consumer.clone());
    wait_until(
        "100 acknowledged and 50 delivered in region a",
        DEADLINE,
        || snapshot(&acked).len() >= 100 && snapshot(&delivered).len() >= 50,
    )
    .await?;

    // The primary region is lost.
    let killed_at = Instant::now();
    a.kill();
    let first_write = {
        let acked = acked.clone();
        let mut first = None;
        wait_until(
            "a write acknowledged after the kill",
            Duration::from_secs(60),
            || {
                first = snapshot(&acked)
                    .iter()
                    .find(|(_, sent, _)| *sent > killed_at)
                    .map(|(_, _, at)| at.duration_since(killed_at));
                first.is_some()
            },
        )
        .await
        .map_err(|e| format!("{e}; gateway log:\n{}", gateway.log()))?;
        first.unwrap_or_default()
    };
    let first_delivery = {
        let mut first = None;
        wait_until("a delivery from region b", Duration::from_secs(60), || {
            first = snapshot(&delivered)
                .iter()
                .find(|(_, topic, origin, at)| {
                    *at > killed_at && (topic.starts_with("a.") || origin == "b")
                })
                .map(|(_, _, _, at)| at.duration_since(killed_at));
            first.is_some()
        })
        .await
        .map_err(|e| format!("{e}; gateway log:\n{}", gateway.log()))?;
        first.unwrap_or_default()
    };
    let status = regions_status(&mut admin).await?;
    eprintln!("after the kill: {status:?}");
    assert!(
        traffic_on(&mut admin, "b").await,
        "traffic is not on b: {status:?}"
    );

    // Writes go on in b for a while; then the primary comes back (empty: tansu keeps no disk).
    let acked_in_b_before = snapshot(&acked).len();
    wait_until("50 writes acknowledged in b", DEADLINE, || {
        snapshot(&acked).len() >= acked_in_b_before + 50
    })
    .await?;
    let copied_before_kill = a_to_b.copied_ids();
    // An outage of some length: the gateway has replaced its clients of the lost region by then.
    tokio::time::sleep_until((killed_at + Duration::from_secs(15)).into()).await;
    a.restart()?;
    let restarted_at = Instant::now();
    wait_for_traffic_on(&mut admin, "a", Duration::from_secs(90)).await?;
    let fail_back = restarted_at.elapsed();
    let acked_after_fail_back = snapshot(&acked).len();
    wait_until("50 writes acknowledged in a again", DEADLINE, || {
        snapshot(&acked).len() >= acked_after_fail_back + 50
    })
    .await?;
    stop.cancel();
    producer.await??;

    // Everything acknowledged arrives, except what a acknowledged and the replicator had not copied
    // when it was killed (the loss window MirrorMaker 2's lag leaves). An ack a gave just before it
    // died can reach the client a moment after `killed_at` (the kill itself takes a few ms), while b
    // acknowledges nothing before a is DOWN (three failed probes, 1 s apart): what arrived within
    // KILL_SETTLE of the kill was a's.
    assert!(
        first_write > KILL_SETTLE,
        "b acknowledged a write {first_write:?} after the kill, before a could be DOWN"
    );
    let acked = snapshot(&acked);
    let acked_before_kill: HashSet<&str> = acked
        .iter()
        .filter(|(_, _, at)| *at <= killed_at + KILL_SETTLE)
        .map(|(id, _, _)| id.as_str())
        .collect();
    let in_loss_window: HashSet<&str> = acked_before_kill
        .iter()
        .copied()
        .filter(|id| !copied_before_kill.contains(*id))
        .collect();
    let must_arrive: HashSet<&str> = acked
        .iter()
        .map(|(id, _, _)| id.as_str())
        .filter(|id| !in_loss_window.contains(id))
        .collect();
    let arrived = |delivered: &Delivered| -> HashSet<String> {
        snapshot(delivered).into_iter().map(|(id, ..)| id).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while must_arrive
        .iter()
        .any(|id| !arrived(&delivered).contains(*id))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_consumer.cancel();
    consumer.await??;
    let delivered = snapshot(&delivered);
    let arrived: HashSet<&str> = delivered.iter().map(|(id, ..)| id.as_str()).collect();
    let missing: Vec<&&str> = must_arrive
        .iter()
        .filter(|id| !arrived.contains(**id))
        .collect();
    let lost_in_window = in_loss_window
        .iter()
        .filter(|id| !arrived.contains(**id))
        .count();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (id, ..) in &delivered {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "FAILOVER active-passive (gRPC): first write acknowledged in b {:.2} s after the kill; \
         first delivery from b {:.2} s after the kill; fail-back {:.2} s after the restart \
         (hold-down 10 s); acknowledged {} in all, {} before the kill, of which the replicator had \
         copied {}; lost in the replication window: {lost_in_window}; duplicates delivered: \
         {duplicates}",
        first_write.as_secs_f64(),
        first_delivery.as_secs_f64(),
        fail_back.as_secs_f64(),
        acked.len(),
        acked_before_kill.len(),
        acked_before_kill.len() - in_loss_window.len(),
    );
    let copied_back = b_to_a.copied_ids();
    let copied_over = a_to_b.copied_ids();
    let explain: Vec<String> = missing
        .iter()
        .take(10)
        .map(|id| {
            let acked_at = acked
                .iter()
                .find(|(acked_id, ..)| acked_id == **id)
                .map(|(_, _, at)| {
                    at.saturating_duration_since(killed_at).as_secs_f64()
                        - killed_at.saturating_duration_since(*at).as_secs_f64()
                })
                .unwrap_or_default();
            format!(
                "{id}: acked {acked_at:.2} s after the kill, copied a->b {}, b->a {}",
                copied_over.contains(**id),
                copied_back.contains(**id)
            )
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records outside the loss window never arrived: {explain:#?}; gateway log:\n{}",
        missing.len(),
        gateway.log()
    );
    let status = regions_status(&mut admin).await?;
    let last = status.last_switch.as_ref().ok_or("no switch recorded")?;
    assert_eq!((last.from.as_str(), last.to.as_str()), ("b", "a"));
    assert!(
        status.switches >= 4,
        "writes and reads each moved twice: {status:?}"
    );
    Ok(())
}
