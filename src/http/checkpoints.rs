//! What the regions' MirrorMaker 2 checkpoints cover of the consumer groups' positions, as
//! Prometheus series: per pair of regions, the `http.lag_groups` groups furthest behind their
//! checkpoint one by one, the others under `group="(other)"`, as for consumer lag (`lag.rs` says
//! why each rendering has a recorder of its own: a group that falls out must stop being exported).

use std::collections::BTreeMap;

use courier_gateway::{
    metrics::names,
    regions::{GroupCoverage, PairCoverage},
};
use metrics_exporter_prometheus::PrometheusBuilder;

use super::lag::series_labels;

/// One series' figures: records behind, and the age of the checkpoint they are behind (`None`
/// for a group that has no checkpoint: its age is not a number).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Figures {
    records_behind: i64,
    age_seconds: Option<f64>,
}

impl Figures {
    /// The age counts only while the group has committed past its checkpoint: a group its
    /// checkpoint covers has no duplicates window however old that checkpoint is (MirrorMaker 2
    /// writes a checkpoint only when the position moved).
    fn add(&mut self, group: &GroupCoverage) {
        self.records_behind += group.records_behind;
        let age = match group.checkpoint_age_ms {
            Some(_) if group.records_behind == 0 => Some(0.0),
            Some(age_ms) => Some(age_ms as f64 / 1e3),
            None => None,
        };
        self.age_seconds = match (self.age_seconds, age) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// The series of `pairs`, by (from, to, group): each pair's first `exported` groups (they come
/// ranked) one by one, the rest summed (records) or the oldest (age) under [`OTHER_GROUPS`].
fn series(pairs: &[PairCoverage], exported: usize) -> BTreeMap<(&str, &str, &str), Figures> {
    let mut series = BTreeMap::new();
    for pair in pairs {
        let labels = series_labels(pair.groups.iter().map(|g| g.group.as_str()), exported);
        for (group, name) in pair.groups.iter().zip(labels) {
            series
                .entry((pair.from.as_str(), pair.to.as_str(), name))
                .or_insert_with(Figures::default)
                .add(group);
        }
    }
    series
}

/// `courier_region_checkpoint_behind_records` and `courier_region_checkpoint_age_seconds` of
/// `pairs` in Prometheus' text format; empty without a region router.
pub(crate) fn render(pairs: &[PairCoverage], exported: usize) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        metrics::describe_gauge!(
            names::REGION_CHECKPOINT_BEHIND,
            "Records a consumer group committed in region `from` past its newest MirrorMaker 2 checkpoint in region `to`: what it would read again if `from` were lost now"
        );
        metrics::describe_gauge!(
            names::REGION_CHECKPOINT_AGE,
            "Age of the oldest of a consumer group's checkpoints in region `to` that it has committed past in `from` (0 when covered)"
        );
        for ((from, to, group), figures) in series(pairs, exported) {
            let labels = [
                ("from", from.to_owned()),
                ("to", to.to_owned()),
                ("group", group.to_owned()),
            ];
            metrics::gauge!(names::REGION_CHECKPOINT_BEHIND, &labels)
                .set(figures.records_behind as f64);
            if let Some(age) = figures.age_seconds {
                metrics::gauge!(names::REGION_CHECKPOINT_AGE, &labels).set(age);
            }
        }
    });
    recorder.handle().render()
}

#[cfg(test)]
mod tests {
    use super::{super::lag::OTHER_GROUPS, *};

    fn group(name: &str, behind: i64, age_ms: Option<i64>) -> GroupCoverage {
        GroupCoverage {
            group: name.into(),
            records_behind: behind,
            checkpoint_age_ms: age_ms,
        }
    }

    fn value(metrics: &str, name: &str, group: &str) -> Option<f64> {
        let prefix = format!("{name}{{from=\"a\",to=\"b\",group=\"{group}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
    }

    /// Two groups one by one, the other three under `(other)`: their records summed, the oldest
    /// age of a group behind; a covered group's age is 0, a group without a checkpoint has none.
    #[test]
    fn exports_the_groups_furthest_behind_and_folds_the_rest() {
        let pairs = [PairCoverage {
            from: "a".into(),
            to: "b".into(),
            groups: vec![
                group("far", 500, Some(90_000)),
                group("new", 40, None),
                group("near", 7, Some(30_000)),
                group("slow", 3, Some(120_000)),
                group("idle", 0, Some(3_600_000)),
            ],
        }];
        let text = render(&pairs, 2);
        let behind = |group| value(&text, names::REGION_CHECKPOINT_BEHIND, group);
        let age = |group| value(&text, names::REGION_CHECKPOINT_AGE, group);
        assert_eq!(behind("far"), Some(500.0));
        assert_eq!(age("far"), Some(90.0));
        assert_eq!(behind("new"), Some(40.0));
        assert_eq!(age("new"), None);
        assert_eq!(behind(OTHER_GROUPS), Some(10.0));
        assert_eq!(age(OTHER_GROUPS), Some(120.0));
        assert_eq!(behind("near"), None);
        let series = text
            .lines()
            .filter(|line| line.starts_with("courier_region_checkpoint"))
            .count();
        assert_eq!(series, 5, "{text}");
        assert!(render(&[], 2).is_empty());
    }
}
