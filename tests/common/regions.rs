//! What the region tests share: a gateway config over two tansu regions, and waits on what the
//! Admin API says of them.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use courier_grpc::proto::v1::{self as pb, admin_client::AdminClient};
use courier_testkit::Tansu;
use tonic::transport::Channel;

use super::{BoxError, TestResult};

/// A gateway config over regions `a` and `b` (tansu needs one record per produced batch, see
/// gateway/tests/kafka.rs). Defaults apart from a hold-down short enough for a test.
pub fn regions_config(local: &str, mode: &str, a: &Tansu, b: &Tansu, hold_down: &str) -> String {
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

/// What a shared list holds now.
pub fn snapshot<T: Clone>(list: &Arc<Mutex<Vec<T>>>) -> Vec<T> {
    list.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Polls `done` every 100 ms until it holds; fails after `limit`, naming `what`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> TestResult {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub async fn regions_status(
    admin: &mut AdminClient<Channel>,
) -> Result<pb::RegionsStatus, BoxError> {
    Ok(admin
        .list_regions(pb::ListRegionsRequest {})
        .await?
        .into_inner())
}

/// Whether writes and reads both go to `region`.
pub async fn traffic_on(admin: &mut AdminClient<Channel>, region: &str) -> bool {
    regions_status(admin).await.is_ok_and(|status| {
        status
            .regions
            .iter()
            .any(|r| r.name == region && r.writes && r.reads)
    })
}

pub async fn wait_for_traffic_on(
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
