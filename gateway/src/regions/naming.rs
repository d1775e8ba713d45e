//! MirrorMaker 2's names: where topic `T` of region `a` appears in another region, and where that
//! region's checkpoints of `a`'s consumer groups are.

use crate::{
    config::ReplicationPolicyKind,
    log::{TopicFilter, TopicSelector},
};

/// The replication policy MirrorMaker 2 runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicationPolicy {
    kind: ReplicationPolicyKind,
    separator: String,
}

impl ReplicationPolicy {
    pub(crate) fn new(kind: ReplicationPolicyKind, separator: &str) -> Self {
        Self {
            kind,
            separator: separator.to_owned(),
        }
    }

    /// The name of `source`'s topic `topic` in another region.
    pub(crate) fn remote_topic(&self, source: &str, topic: &str) -> String {
        match self.kind {
            ReplicationPolicyKind::Default => format!("{source}{}{topic}", self.separator),
            ReplicationPolicyKind::Identity => topic.to_owned(),
        }
    }

    /// The topic, in another region, holding the checkpoints of `source`'s consumer groups. Both of
    /// MirrorMaker 2's policies name it `<source>.checkpoints.internal`.
    pub(crate) fn checkpoints_topic(&self, source: &str) -> String {
        format!("{source}.checkpoints.internal")
    }

    /// What a subscription to `selector` reads in one region: the topics themselves and their mirrors
    /// from each of `others` (only those that exist, in `existing`, so reading never creates a mirror
    /// topic MirrorMaker 2 has not made).
    pub(crate) fn expand(
        &self,
        selector: &TopicSelector,
        others: &[&str],
        existing: &[String],
    ) -> TopicSelector {
        match selector {
            TopicSelector::Names(names) => {
                let mut expanded = names.clone();
                for name in names {
                    for source in others {
                        let mirror = self.remote_topic(source, name);
                        if existing.contains(&mirror) && !expanded.contains(&mirror) {
                            expanded.push(mirror);
                        }
                    }
                }
                TopicSelector::Names(expanded)
            }
            TopicSelector::Pattern(pattern) if self.kind == ReplicationPolicyKind::Default => self
                .expand_pattern(pattern, others)
                .map(TopicSelector::Pattern)
                .unwrap_or_else(|| selector.clone()),
            TopicSelector::Restricted { pattern, allowed }
                if self.kind == ReplicationPolicyKind::Default =>
            {
                let Some(pattern) = self.expand_pattern(pattern, others) else {
                    return selector.clone();
                };
                // A mirror is read as its source is: `a.orders` when `orders` may be read.
                let prefixes: Vec<String> = others
                    .iter()
                    .map(|source| format!("{source}{}", self.separator))
                    .collect();
                let source_allowed = allowed.clone();
                let allowed = TopicFilter::new(move |topic| {
                    source_allowed.accepts(topic)
                        || prefixes.iter().any(|prefix| {
                            topic
                                .strip_prefix(prefix.as_str())
                                .is_some_and(|source| source_allowed.accepts(source))
                        })
                });
                TopicSelector::Restricted { pattern, allowed }
            }
            TopicSelector::Pattern(_) | TopicSelector::Restricted { .. } => selector.clone(),
        }
    }

    /// `pattern` widened to the mirrors of its topics from each of `others` (`^(?:a\.|b\.)?...$`);
    /// `None` if the widened pattern does not compile.
    fn expand_pattern(&self, pattern: &regex::Regex, others: &[&str]) -> Option<regex::Regex> {
        let prefixes: Vec<String> = others
            .iter()
            .map(|source| regex::escape(&format!("{source}{}", self.separator)))
            .collect();
        let inner = pattern
            .as_str()
            .trim_start_matches('^')
            .trim_end_matches('$');
        regex::Regex::new(&format!("^(?:{})?{inner}$", prefixes.join("|"))).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_prefixes_the_source_region() {
        let policy = ReplicationPolicy::new(ReplicationPolicyKind::Default, ".");
        assert_eq!(policy.remote_topic("eu", "orders"), "eu.orders");
        assert_eq!(policy.checkpoints_topic("eu"), "eu.checkpoints.internal");
        let dashed = ReplicationPolicy::new(ReplicationPolicyKind::Default, "-");
        assert_eq!(dashed.remote_topic("eu", "orders"), "eu-orders");
        let identity = ReplicationPolicy::new(ReplicationPolicyKind::Identity, ".");
        assert_eq!(identity.remote_topic("eu", "orders"), "orders");
    }

    #[test]
    fn names_take_the_mirrors_that_exist() {
        let policy = ReplicationPolicy::new(ReplicationPolicyKind::Default, ".");
        let expanded = policy.expand(
            &TopicSelector::Names(vec!["orders".into()]),
            &["eu", "us"],
            &["orders".into(), "eu.orders".into()],
        );
        let TopicSelector::Names(names) = expanded else {
            panic!("names stay names");
        };
        assert_eq!(names, ["orders", "eu.orders"]);
    }

    #[test]
    fn patterns_take_the_mirrors_too() -> Result<(), regex::Error> {
        let policy = ReplicationPolicy::new(ReplicationPolicyKind::Default, ".");
        let expanded = policy.expand(&TopicSelector::pattern("ord.*")?, &["eu"], &[]);
        assert!(expanded.matches("orders"));
        assert!(expanded.matches("eu.orders"));
        assert!(!expanded.matches("us.orders"));
        Ok(())
    }
}
