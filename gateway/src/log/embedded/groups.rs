//! Consumer groups of the embedded log: membership, partition assignment and cooperative rebalancing.
//!
//! A rebalance runs whenever a member joins or leaves, or a topic appears or disappears. It is
//! cooperative, like Kafka's `cooperative-sticky` protocol: first every member that loses partitions is
//! told to revoke them and answers once it has committed their acknowledged prefix and stopped reading
//! them; only then are the partitions handed to their new owners, who start at that committed offset. A
//! partition never has two readers at once. Rebalances run one at a time.
//!
//! Plain readers (no group) are members of a private group of their own that commits nothing, so topic
//! patterns pick up new topics the same way for both.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{mpsc, oneshot};

use super::topics::Topics;
use crate::log::{GroupMember, TopicPartition, TopicSelector};

/// What the coordinator tells a member.
#[derive(Debug)]
pub(super) enum GroupCommand {
    /// Start reading these partitions.
    Assign(Vec<TopicPartition>),
    /// Commit and stop reading these partitions, then answer.
    Revoke {
        partitions: Vec<TopicPartition>,
        done: oneshot::Sender<()>,
    },
}

/// A group as a member sees it: its name and whether it is a plain reader's private group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct GroupId {
    pub(super) name: String,
    /// Private groups belong to one plain reader: never listed, never committed.
    pub(super) private: bool,
}

#[derive(Debug)]
struct Member {
    client: String,
    protocol: &'static str,
    selector: TopicSelector,
    commands: mpsc::UnboundedSender<GroupCommand>,
    assigned: BTreeSet<TopicPartition>,
}

#[derive(Debug, Default)]
struct Group {
    /// By member id; ids sort in join order.
    members: BTreeMap<String, Member>,
}

/// Who reads what.
#[derive(Debug)]
pub(super) struct Coordinator {
    groups: Mutex<HashMap<GroupId, Group>>,
    /// Serializes rebalances, so each one plans from the outcome of the previous one.
    rebalancing: tokio::sync::Mutex<()>,
    next_member: AtomicU64,
    topics: Arc<Topics>,
}

impl Coordinator {
    pub(super) fn new(topics: Arc<Topics>) -> Self {
        Self {
            groups: Mutex::default(),
            rebalancing: tokio::sync::Mutex::new(()),
            next_member: AtomicU64::new(1),
            topics,
        }
    }

    /// Adds a member and starts a rebalance; the member learns its partitions through the returned
    /// channel.
    pub(super) fn join(
        self: &Arc<Self>,
        group: &GroupId,
        client: String,
        protocol: &'static str,
        selector: TopicSelector,
    ) -> (String, mpsc::UnboundedReceiver<GroupCommand>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let member_id = format!(
            "{protocol}-{:010}",
            self.next_member.fetch_add(1, Ordering::Relaxed)
        );
        {
            let mut groups = self.lock();
            let entry = groups.entry(group.clone()).or_default();
            entry.members.insert(
                member_id.clone(),
                Member {
                    client,
                    protocol,
                    selector,
                    commands,
                    assigned: BTreeSet::new(),
                },
            );
        }
        self.spawn_rebalance(group.clone());
        (member_id, receiver)
    }

    /// Removes a member (which has committed already) and lets the others take over its partitions.
    pub(super) fn leave(self: &Arc<Self>, group: &GroupId, member_id: &str) {
        {
            let mut groups = self.lock();
            if let Some(entry) = groups.get_mut(group) {
                entry.members.remove(member_id);
                if entry.members.is_empty() {
                    groups.remove(group);
                    return;
                }
            }
        }
        self.spawn_rebalance(group.clone());
    }

    /// Rebalances every group, after topics were created or deleted; resolves when all are done.
    pub(super) async fn rebalance_all(self: &Arc<Self>) {
        let groups: Vec<GroupId> = self.lock().keys().cloned().collect();
        for group in groups {
            self.clone().rebalance(group).await;
        }
    }

    /// Live members of a public group.
    pub(super) fn members(&self, group: &str) -> Vec<GroupMember> {
        let groups = self.lock();
        let Some(entry) = groups.get(&GroupId {
            name: group.to_owned(),
            private: false,
        }) else {
            return Vec::new();
        };
        entry
            .members
            .iter()
            .map(|(id, member)| GroupMember {
                member_id: id.clone(),
                client: member.client.clone(),
                protocol: member.protocol.to_owned(),
                assigned: member.assigned.iter().cloned().collect(),
            })
            .collect()
    }

    /// Names of public groups with live members.
    pub(super) fn active_groups(&self) -> Vec<String> {
        self.lock()
            .keys()
            .filter(|id| !id.private)
            .map(|id| id.name.clone())
            .collect()
    }

    fn spawn_rebalance(self: &Arc<Self>, group: GroupId) {
        tokio::spawn(self.clone().rebalance(group));
    }

    async fn rebalance(self: Arc<Self>, group: GroupId) {
        let _one_at_a_time = self.rebalancing.lock().await;
        let Some(plan) = self.plan(&group) else {
            return;
        };

        // Phase 1: revoke, and wait until every loser has committed and let go.
        let mut waits = Vec::new();
        for (commands, partitions) in plan.revocations {
            let (done, finished) = oneshot::channel();
            if commands
                .send(GroupCommand::Revoke { partitions, done })
                .is_ok()
            {
                waits.push(finished);
            }
        }
        for finished in waits {
            // An error means the member went away mid-revoke; it committed on its way out.
            let _ = finished.await;
        }

        // Phase 2: hand out, to members still present. Anyone who left meanwhile has queued another
        // rebalance behind this one, which gives their partitions to someone else.
        let mut groups = self.lock();
        let Some(entry) = groups.get_mut(&group) else {
            return;
        };
        for (member_id, member) in &mut entry.members {
            let Some(target) = plan.target.get(member_id) else {
                continue;
            };
            member
                .assigned
                .retain(|partition| target.contains(partition));
            let added: Vec<TopicPartition> = target.difference(&member.assigned).cloned().collect();
            if added.is_empty() {
                continue;
            }
            member.assigned.extend(added.iter().cloned());
            let _ = member.commands.send(GroupCommand::Assign(added));
        }
    }

    /// Computes the target assignment: each partition of each matching topic goes to the eligible
    /// member holding the fewest so far, preferring its current owner among equals (sticky and
    /// balanced).
    fn plan(&self, group: &GroupId) -> Option<Plan> {
        let groups = self.lock();
        let entry = groups.get(group)?;
        let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = entry
            .members
            .keys()
            .map(|id| (id.clone(), BTreeSet::new()))
            .collect();
        for topic in self.topics.all() {
            let eligible: Vec<&String> = entry
                .members
                .iter()
                .filter(|(_, m)| m.selector.matches(&topic.name))
                .map(|(id, _)| id)
                .collect();
            if eligible.is_empty() {
                continue;
            }
            for partition in 0..topic.partition_count() as i32 {
                let tp = TopicPartition {
                    topic: topic.name.clone(),
                    partition,
                };
                let fewest = eligible
                    .iter()
                    .map(|id| target[*id].len())
                    .min()
                    .unwrap_or(0);
                let candidates: Vec<&String> = eligible
                    .iter()
                    .copied()
                    .filter(|id| target[*id].len() == fewest)
                    .collect();
                let owner = candidates
                    .iter()
                    .copied()
                    .find(|id| entry.members[*id].assigned.contains(&tp))
                    .or_else(|| candidates.first().copied());
                if let Some(owner) = owner.and_then(|id| target.get_mut(id)) {
                    owner.insert(tp);
                }
            }
        }
        let revocations = entry
            .members
            .iter()
            .filter_map(|(id, member)| {
                let lost: Vec<TopicPartition> = member
                    .assigned
                    .iter()
                    .filter(|tp| !target[id].contains(*tp))
                    .cloned()
                    .collect();
                (!lost.is_empty()).then(|| (member.commands.clone(), lost))
            })
            .collect();
        Some(Plan {
            target,
            revocations,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<GroupId, Group>> {
        // Poisoning means a panic elsewhere; the membership map is still consistent (no partial updates).
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct Plan {
    target: BTreeMap<String, BTreeSet<TopicPartition>>,
    revocations: Vec<(mpsc::UnboundedSender<GroupCommand>, Vec<TopicPartition>)>,
}
