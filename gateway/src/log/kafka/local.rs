//! This gateway's own subscribers by Kafka client id, so describe-group can show their partitions when
//! the broker's DescribeGroups answer carries no member assignments (tansu 0.6.0 sends none; Apache
//! Kafka does, and then its answer is used).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError, Weak},
};

use crate::log::{TopicPartition, member::AckWindow};

/// Each local subscriber's in-flight window, by Kafka client id. Weak references: the table must not
/// keep a finished subscription's window alive.
#[derive(Debug, Default)]
pub(super) struct LocalMembers {
    members: Mutex<HashMap<String, Weak<AckWindow>>>,
}

impl LocalMembers {
    pub(super) fn register(&self, client_id: &str, window: Weak<AckWindow>) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        members.retain(|_, window| window.strong_count() > 0);
        members.insert(client_id.to_owned(), window);
    }

    /// Partitions a local subscriber holds; `None` if the client id is not one of ours.
    pub(super) fn assigned(&self, client_id: &str) -> Option<Vec<TopicPartition>> {
        let members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        let window = members.get(client_id)?.upgrade()?;
        let mut held = window.held_partitions();
        held.sort();
        Some(held)
    }
}
