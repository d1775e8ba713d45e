//! How the fan-out hub ([`courier_gateway::readers::fanout`]) addresses records for MQTT: a record's
//! address is its MQTT topic, and members' filters are MQTT topic filters, kept in a tree with one
//! level of a filter per edge, so the members a record goes to are found by walking its topic's
//! levels, whatever the number of filters.
//!
//! Devices commonly subscribe with wildcards of their own (`devices/<id>/commands/#`): tried one by
//! one, 10,000 such filters cost 10,000 matches per record. Here a topic visits at most one literal,
//! one `+` and one `#` child per level.

use std::collections::HashMap;

use courier_gateway::{
    log::Record,
    readers::fanout::{Addressing, FilterIndex},
};

use crate::mapping;

/// MQTT's addressing: records by MQTT topic ([`mapping::record_topic`]), filters by MQTT's rules.
#[derive(Debug, Clone, Copy)]
pub struct MqttTopics;

impl Addressing for MqttTopics {
    fn address(&self, record: &Record) -> Option<String> {
        mapping::record_topic(record)
    }

    fn matches(&self, filter: &str, address: &str) -> bool {
        mapping::matches(filter, address)
    }

    fn index(&self) -> Box<dyn FilterIndex> {
        Box::<FilterTree>::default()
    }

    fn protocol(&self) -> &'static str {
        "mqtt"
    }
}

/// Member ids by filter, for finding the members whose filters match a topic.
#[derive(Debug, Default)]
struct FilterTree {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    /// By the next level of the filter: a literal, `+` or `#`.
    children: Children,
    /// Members with a filter ending here (a handful at most, usually one).
    members: Vec<u64>,
}

/// Past this many children a node keeps them in a map.
const FEW_CHILDREN: usize = 8;

/// A node's children by level. Most nodes have one (a device's `commands` under its id, `#` under
/// that): a short list, grown one entry at a time, costs a few dozen bytes where a map's first
/// allocation is four entries; a node with many (the one holding every device id) keeps a map,
/// boxed, so that every node (a device's three) is not the size of a map.
#[derive(Debug)]
#[expect(clippy::box_collection)] // the box is the point: one node holds a map, thousands do not
enum Children {
    Few(Vec<(Box<str>, Node)>),
    Many(Box<HashMap<Box<str>, Node>>),
}

impl Default for Children {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl Children {
    fn is_empty(&self) -> bool {
        match self {
            Self::Few(few) => few.is_empty(),
            Self::Many(many) => many.is_empty(),
        }
    }

    fn get(&self, level: &str) -> Option<&Node> {
        match self {
            Self::Few(few) => few
                .iter()
                .find_map(|(name, node)| (**name == *level).then_some(node)),
            Self::Many(many) => many.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node> {
        match self {
            Self::Few(few) => few
                .iter_mut()
                .find_map(|(name, node)| (**name == *level).then_some(node)),
            Self::Many(many) => many.get_mut(level),
        }
    }

    /// The child at `level`, added empty if there is none.
    fn get_or_add(&mut self, level: &str) -> &mut Node {
        if let Self::Few(few) = self
            && few.len() >= FEW_CHILDREN
            && !few.iter().any(|(name, _)| **name == *level)
        {
            *self = Self::Many(Box::new(std::mem::take(few).into_iter().collect()));
        }
        match self {
            Self::Few(few) => {
                let at = match few.iter().position(|(name, _)| **name == *level) {
                    Some(at) => at,
                    None => {
                        few.reserve_exact(1);
                        few.push((level.into(), Node::default()));
                        few.len() - 1
                    }
                };
                &mut few[at].1
            }
            Self::Many(many) => many.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Self::Few(few) => few.retain(|(name, _)| **name != *level),
            Self::Many(many) => {
                many.remove(level);
            }
        }
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.members.is_empty()
    }
}

impl FilterIndex for FilterTree {
    /// Adds member `id`'s `filter` (once, however often it is added).
    fn insert(&mut self, filter: &str, id: u64) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_or_add(level);
        }
        if !node.members.contains(&id) {
            if node.members.is_empty() {
                // Nearly always the node's one member: room for one, not a first growth's four.
                node.members.reserve_exact(1);
            }
            node.members.push(id);
        }
    }

    /// Removes member `id`'s `filter`, and the branches it leaves empty.
    fn remove(&mut self, filter: &str, id: u64) {
        let levels: Vec<&str> = filter.split('/').collect();
        remove_from(&mut self.root, &levels, id);
    }

    /// Appends to `out` the members with a filter matching `topic`; a member matching by several
    /// filters appears once for each, for the caller to deduplicate.
    fn matching(&self, topic: &str, out: &mut Vec<u64>) {
        let levels: Vec<&str> = topic.split('/').collect();
        // MQTT: a topic starting with `$` is matched by no filter starting with a wildcard.
        let system = topic.starts_with('$');
        collect(&self.root, &levels, !system, out);
    }
}

fn remove_from(node: &mut Node, levels: &[&str], id: u64) {
    let Some((level, rest)) = levels.split_first() else {
        node.members.retain(|member| *member != id);
        return;
    };
    if let Some(child) = node.children.get_mut(level) {
        remove_from(child, rest, id);
        if child.is_empty() {
            node.children.remove(level);
        }
    }
}

fn collect(node: &Node, levels: &[&str], wildcards: bool, out: &mut Vec<u64>) {
    // `#` matches the rest, including no level at all (`a/#` matches `a`).
    if wildcards && let Some(rest) = node.children.get("#") {
        out.extend_from_slice(&rest.members);
    }
    let Some((level, rest)) = levels.split_first() else {
        out.extend_from_slice(&node.members);
        return;
    };
    if let Some(child) = node.children.get(level) {
        collect(child, rest, true, out);
    }
    if wildcards && let Some(child) = node.children.get("+") {
        collect(child, rest, true, out);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn matching(tree: &FilterTree, topic: &str) -> BTreeSet<u64> {
        let mut out = Vec::new();
        tree.matching(topic, &mut out);
        out.into_iter().collect()
    }

    #[test]
    fn wildcards_and_system_topics() {
        let mut tree = FilterTree::default();
        for (id, filter) in ["a/b", "a/+", "a/#", "#", "+/b", "$SYS/#", "a//b"]
            .into_iter()
            .enumerate()
        {
            tree.insert(filter, id as u64);
        }
        assert_eq!(matching(&tree, "a/b"), BTreeSet::from([0, 1, 2, 3, 4]));
        assert_eq!(matching(&tree, "a"), BTreeSet::from([2, 3]));
        assert_eq!(matching(&tree, "a//b"), BTreeSet::from([2, 3, 6]));
        assert_eq!(matching(&tree, "$SYS/load"), BTreeSet::from([5]));
        assert_eq!(matching(&tree, "$SYS"), BTreeSet::from([5]));
        assert_eq!(matching(&tree, "x/b"), BTreeSet::from([3, 4]));
    }

    /// Every level of every device's filter is a node: one the size of a map (72 bytes, not 48)
    /// was a hundred bytes more per device.
    #[test]
    fn a_node_is_no_larger_than_a_list_and_a_member_list() {
        assert_eq!(
            std::mem::size_of::<Node>(),
            2 * std::mem::size_of::<Vec<u64>>()
        );
    }

    #[test]
    fn removal_prunes_and_keeps_the_others() {
        let mut tree = FilterTree::default();
        tree.insert("devices/1/commands/#", 1);
        tree.insert("devices/2/commands/#", 2);
        tree.insert("devices/+/commands/#", 3);
        tree.remove("devices/1/commands/#", 1);
        assert_eq!(
            matching(&tree, "devices/1/commands/reboot"),
            BTreeSet::from([3])
        );
        tree.remove("devices/+/commands/#", 3);
        tree.remove("devices/2/commands/#", 2);
        assert!(tree.root.is_empty(), "{:?}", tree.root);
        // Removing what is not there changes nothing.
        tree.remove("devices/9", 9);
        assert!(tree.root.is_empty());
    }

    #[test]
    fn a_node_with_many_children_keeps_them_in_a_map() {
        let mut tree = FilterTree::default();
        let devices = (FEW_CHILDREN * 4) as u64;
        for id in 0..devices {
            tree.insert(&format!("devices/{id}/commands/#"), id);
        }
        tree.insert("devices/+/commands/#", devices);
        for id in 0..devices {
            assert_eq!(
                matching(&tree, &format!("devices/{id}/commands/set")),
                BTreeSet::from([id, devices])
            );
        }
        let Some(ids) = tree.root.children.get("devices") else {
            panic!("no devices node");
        };
        assert!(matches!(ids.children, Children::Many(_)));
        for id in 0..=devices {
            let filter = if id == devices {
                "devices/+/commands/#".to_owned()
            } else {
                format!("devices/{id}/commands/#")
            };
            tree.remove(&filter, id);
        }
        assert!(tree.root.is_empty(), "{:?}", tree.root);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new()),
            Just("$s".to_owned()),
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_owned())], 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut levels, hash)| {
                if hash {
                    levels.push("#".to_owned());
                }
                levels.join("/")
            })
    }

    proptest! {
        /// The tree finds exactly the filters that match a topic one by one, after any adds and
        /// removes.
        #[test]
        fn agrees_with_matching_one_by_one(
            filters in prop::collection::vec(filter(), 1..20),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            topics in prop::collection::vec(topic(), 1..20),
        ) {
            let mut tree = FilterTree::default();
            let mut kept: Vec<(u64, String)> = Vec::new();
            for (id, filter) in filters.iter().enumerate() {
                tree.insert(filter, id as u64);
                kept.push((id as u64, filter.clone()));
            }
            for index in removed {
                if kept.is_empty() {
                    break;
                }
                let (id, filter) = kept.remove(index.index(kept.len()));
                tree.remove(&filter, id);
            }
            for topic in &topics {
                let expected: BTreeSet<u64> = kept
                    .iter()
                    .filter(|(_, filter)| mapping::matches(filter, topic))
                    .map(|(id, _)| *id)
                    .collect();
                prop_assert_eq!(matching(&tree, topic), expected, "topic {}", topic);
            }
        }
    }
}
