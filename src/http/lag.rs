//! Consumer lag, read from the log every `http.lag_interval`: the groups furthest behind for the
//! status page, and `courier_consumer_lag` for Prometheus.
//!
//! Clients name groups, so one series per group and topic would let them grow the metrics without
//! end. Only the `http.lag_groups` groups furthest behind get series of their own; the lag of every
//! other group is summed per topic under `group="(other)"` ([`OTHER_GROUPS`]).
//!
//! A group that falls out of the top, or disappears, must stop being exported, not linger with its
//! last value. The process-wide recorder cannot forget a series (its handle only renders; its idle
//! timeout applies to every gauge alike, and would drop `courier_connections` of a quiet protocol
//! too), so each reading records its series into a recorder of its own and keeps only the rendered
//! text: `/metrics` serves the process-wide recorder's text followed by the last reading's.

use std::collections::BTreeMap;

use courier_gateway::{log::Log, metrics::names};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::Serialize;

/// Groups the status page lists.
const TOP_GROUPS: usize = 10;

/// The `group` label of the series that sums the groups not exported one by one. A group that is
/// really called this is counted in the sum too, so no two series ever share their labels.
pub(crate) const OTHER_GROUPS: &str = "(other)";

/// A consumer group and how far behind it is.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupLag {
    group: String,
    lag: i64,
    members: usize,
    topics: Vec<String>,
}

/// One reading of every group's lag.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reading {
    /// The groups furthest behind, for the status page.
    pub(crate) top: Vec<GroupLag>,
    /// `courier_consumer_lag` in Prometheus' text format.
    pub(crate) metrics: String,
}

/// A group's lag per topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Behind {
    group: String,
    members: usize,
    per_topic: BTreeMap<String, i64>,
}

impl Behind {
    fn total(&self) -> i64 {
        self.per_topic.values().sum()
    }
}

/// Reads every group's lag; `exported` groups get series of their own. `None` when the groups
/// cannot be listed.
pub(crate) async fn read(log: &dyn Log, exported: usize) -> Option<Reading> {
    let names = log.list_groups().await.ok()?;
    let mut groups = Vec::with_capacity(names.len());
    for name in names {
        let Ok(described) = log.describe_group(&name).await else {
            continue;
        };
        let mut per_topic: BTreeMap<String, i64> = BTreeMap::new();
        for offset in &described.offsets {
            *per_topic
                .entry(offset.partition.topic.to_string())
                .or_default() += offset.lag.max(0);
        }
        groups.push(Behind {
            group: name,
            members: described.members.len(),
            per_topic,
        });
    }
    Some(of(groups, exported))
}

/// The reading of `groups`: furthest behind first (then by name, so ties rank the same each time).
fn of(mut groups: Vec<Behind>, exported: usize) -> Reading {
    groups.sort_by(|a, b| {
        b.total()
            .cmp(&a.total())
            .then_with(|| a.group.cmp(&b.group))
    });
    let metrics = render(&series(&groups, exported));
    let top = groups
        .into_iter()
        .take(TOP_GROUPS)
        .map(|behind| GroupLag {
            lag: behind.total(),
            members: behind.members,
            topics: behind.per_topic.into_keys().collect(),
            group: behind.group,
        })
        .collect();
    Reading { top, metrics }
}

/// The series to export, by (group, topic): the first `exported` of `groups` (ranked) one by one,
/// the rest summed per topic under [`OTHER_GROUPS`].
fn series(groups: &[Behind], exported: usize) -> BTreeMap<(&str, &str), i64> {
    let mut series = BTreeMap::new();
    let labels = series_labels(groups.iter().map(|behind| behind.group.as_str()), exported);
    for (behind, group) in groups.iter().zip(labels) {
        for (topic, lag) in &behind.per_topic {
            *series.entry((group, topic.as_str())).or_default() += lag;
        }
    }
    series
}

/// The `group` label of each of `groups` (ranked, furthest behind first): the first `exported`
/// their own name, every other one [`OTHER_GROUPS`].
pub(crate) fn series_labels<'a>(
    groups: impl Iterator<Item = &'a str>,
    exported: usize,
) -> impl Iterator<Item = &'a str> {
    let mut own = 0;
    groups.map(move |group| {
        let alone = own < exported && group != OTHER_GROUPS;
        own += usize::from(alone);
        if alone { group } else { OTHER_GROUPS }
    })
}

/// The series in Prometheus' text format, written by a recorder made for this reading alone.
fn render(series: &BTreeMap<(&str, &str), i64>) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_gauge!(
            names::CONSUMER_LAG,
            "Records a consumer group has yet to commit; groups past http.lag_groups are summed under group=\"(other)\""
        );
        for ((group, topic), lag) in series {
            metrics::gauge!(names::CONSUMER_LAG, "group" => (*group).to_owned(), "topic" => (*topic).to_owned())
                .set(*lag as f64);
        }
    });
    recorder.handle().render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behind(group: &str, lags: &[(&str, i64)]) -> Behind {
        Behind {
            group: group.to_owned(),
            members: 0,
            per_topic: lags.iter().map(|(t, l)| ((*t).to_owned(), *l)).collect(),
        }
    }

    fn value(metrics: &str, group: &str, topic: &str) -> Option<f64> {
        let name = format!(
            "{}{{group=\"{group}\",topic=\"{topic}\"}} ",
            names::CONSUMER_LAG
        );
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&name)?.trim().parse().ok())
    }

    fn exported_series(metrics: &str) -> usize {
        metrics
            .lines()
            .filter(|line| line.starts_with(names::CONSUMER_LAG))
            .count()
    }

    /// N + 5 groups: the N furthest behind one by one, the other five summed into one series per
    /// topic; a group that falls out of the top stops being exported on its own.
    #[test]
    fn only_the_groups_furthest_behind_have_series_of_their_own() {
        const N: usize = 3;
        let groups: Vec<Behind> = (0..N + 5)
            .map(|i| behind(&format!("g{i}"), &[("orders", 100 * (i as i64 + 1))]))
            .collect();
        let reading = of(groups.clone(), N);
        assert_eq!(
            exported_series(&reading.metrics),
            N + 1,
            "{}",
            reading.metrics
        );
        for i in 5..N + 5 {
            let lag = 100.0 * (i as f64 + 1.0);
            assert_eq!(
                value(&reading.metrics, &format!("g{i}"), "orders"),
                Some(lag)
            );
        }
        // g0..g4: 100 + 200 + 300 + 400 + 500.
        assert_eq!(
            value(&reading.metrics, OTHER_GROUPS, "orders"),
            Some(1500.0)
        );
        assert!(
            reading
                .metrics
                .contains("# TYPE courier_consumer_lag gauge")
        );

        // g7 catches up: g4 takes its place, and g7 is in the sum.
        let mut next = groups;
        next[7] = behind("g7", &[("orders", 0)]);
        let reading = of(next, N);
        assert_eq!(exported_series(&reading.metrics), N + 1);
        assert_eq!(value(&reading.metrics, "g7", "orders"), None);
        assert_eq!(value(&reading.metrics, "g4", "orders"), Some(500.0));
        assert_eq!(
            value(&reading.metrics, OTHER_GROUPS, "orders"),
            Some(1000.0)
        );
    }

    #[test]
    fn sums_are_per_topic_and_a_group_called_other_joins_them() {
        let groups = vec![
            behind(OTHER_GROUPS, &[("a", 50)]),
            behind("big", &[("a", 10), ("b", 30)]),
            behind("small", &[("a", 1), ("b", 2)]),
        ];
        let reading = of(groups, 1);
        assert_eq!(value(&reading.metrics, "big", "a"), Some(10.0));
        assert_eq!(value(&reading.metrics, "big", "b"), Some(30.0));
        assert_eq!(value(&reading.metrics, OTHER_GROUPS, "a"), Some(51.0));
        assert_eq!(value(&reading.metrics, OTHER_GROUPS, "b"), Some(2.0));
        assert_eq!(exported_series(&reading.metrics), 4);
        assert_eq!(
            reading.top.len(),
            3,
            "the status page lists every group up to its ten"
        );
    }
}
