//! The gateway's HTTP endpoint read as a probe or a scraper would: `/metrics` and its series.

use std::{net::SocketAddr, time::Duration};

use super::{BoxError, DEADLINE};

/// One GET, as a probe would: status and body, whatever the status.
pub fn get(http: SocketAddr, path: &str) -> Result<(u16, String), BoxError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut response = agent.get(&format!("http://{http}{path}")).call()?;
    let status = response.status().as_u16();
    Ok((status, response.body_mut().read_to_string()?))
}

/// The value of one series in Prometheus' text format (`name{labels}` exactly as exported).
pub fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `/metrics` until every expected series has its value (counters settle as acks land).
pub async fn await_series(http: SocketAddr, expected: &[(&str, f64)]) -> Result<String, BoxError> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, body) = tokio::task::block_in_place(|| get(http, "/metrics"))?;
        assert_eq!(status, 200);
        let missing: Vec<String> = expected
            .iter()
            .filter(|(name, value)| series(&body, name) != Some(*value))
            .map(|(name, value)| format!("{name} = {value} (got {:?})", series(&body, name)))
            .collect();
        if missing.is_empty() {
            return Ok(body);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("metrics never showed {missing:?}:\n{body}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
