//! Who retains what: how many retained messages, and how many payload bytes, each account holds,
//! kept from the retained table as it changes. Every replica follows the same table, so every
//! replica holds a principal to the same caps (`mqtt.max_retained_per_principal`,
//! `mqtt.max_retained_bytes_per_principal`), whichever replica its clients publish through.
//!
//! An account is a principal by name, or an anonymous client by its client id, as for quotas
//! ([`Principal::account_key`](courier_gateway::auth::Principal::account_key)). Its name is stored
//! with each retained message (the `mqtt-owner` header); messages retained before owners were
//! stored, or written by others than the bridge, belong to nobody and count for nobody. A
//! message's bytes are what the table holds of it: its topic, payload and headers (MQTT 5
//! properties included).
//!
//! When the table reads its topic again from the start (after a move to another region's
//! copies), it forgets what it held without a change per key: the first record of the new read
//! clears the counts here too, and the read rebuilds them.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, Mutex, PoisonError},
};

use courier_gateway::{log::Record, readers::table::Version};

use crate::mapping::HEADER_OWNER;

/// What one account retains.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// Retained messages.
    pub messages: u64,
    /// Their bytes as stored: topic, payload and headers.
    pub bytes: u64,
}

/// The accounts' retained messages, by account and by topic.
#[derive(Debug, Default)]
pub struct RetainedOwners {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The table's read the counts are of.
    read: u64,
    /// Each retained topic's owner and size.
    by_topic: HashMap<String, (Arc<str>, u64)>,
    /// Each owner's totals; an owner holding nothing is removed.
    by_owner: HashMap<Arc<str>, Retained>,
}

impl RetainedOwners {
    /// Applies a change of the retained table: `topic`'s newest record, `None` once deleted, read
    /// as `version`.
    pub fn on_change(&self, topic: &str, record: Option<&Record>, version: &Version) {
        let owner = record.and_then(|record| {
            let header = record.headers.iter().find(|h| h.key == HEADER_OWNER)?;
            let owner = std::str::from_utf8(&header.value).ok()?;
            Some((owner, record.size() as u64))
        });
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((read, ..)) = version.place
            && read > state.read
        {
            *state = State {
                read,
                ..State::default()
            };
        }
        state.release(topic);
        if let Some((owner, bytes)) = owner {
            state.hold(topic, owner, bytes);
        }
    }

    /// What `owner` retains now, and would once `topic`'s retained message is its own of
    /// `bytes`, read together.
    pub fn retaining(&self, owner: &str, topic: &str, bytes: u64) -> (Retained, Retained) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = state.by_owner.get(owner).copied().unwrap_or_default();
        let mut totals = now;
        match state.by_topic.get(topic) {
            Some((held_by, held)) if &**held_by == owner => {
                totals.bytes = totals.bytes.saturating_sub(*held);
            }
            _ => totals.messages += 1,
        }
        totals.bytes += bytes;
        (now, totals)
    }

    /// What `owner` retains now.
    #[cfg(test)]
    fn of(&self, owner: &str) -> Retained {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.by_owner.get(owner).copied().unwrap_or_default()
    }
}

impl State {
    fn release(&mut self, topic: &str) {
        let Some((owner, bytes)) = self.by_topic.remove(topic) else {
            return;
        };
        if let Entry::Occupied(mut entry) = self.by_owner.entry(owner) {
            let totals = entry.get_mut();
            totals.messages = totals.messages.saturating_sub(1);
            totals.bytes = totals.bytes.saturating_sub(bytes);
            if totals.messages == 0 {
                entry.remove();
            }
        }
    }

    fn hold(&mut self, topic: &str, owner: &str, bytes: u64) {
        let owner: Arc<str> = match self.by_owner.get_key_value(owner) {
            Some((known, _)) => known.clone(),
            None => Arc::from(owner),
        };
        let totals = self.by_owner.entry(owner.clone()).or_default();
        totals.messages += 1;
        totals.bytes += bytes;
        self.by_topic.insert(topic.to_owned(), (owner, bytes));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use courier_gateway::log::Header;

    use super::*;

    /// A record of `owner` holding `payload` (and the owner header: its size is the owner's
    /// length plus 10).
    fn retained(owner: Option<&str>, payload: &str) -> Record {
        Record {
            topic: Arc::from("mqtt.retained"),
            partition: 0,
            offset: 0,
            key: None,
            value: Some(Bytes::copy_from_slice(payload.as_bytes())),
            headers: owner
                .map(|owner| Header {
                    key: HEADER_OWNER.into(),
                    value: Bytes::copy_from_slice(owner.as_bytes()),
                })
                .into_iter()
                .collect(),
            timestamp_ms: 0,
            courier_id: String::new(),
            origin: String::new(),
        }
    }

    fn read(n: u64) -> Version {
        Version {
            timestamp_ms: 0,
            courier_id: String::new(),
            place: Some((n, Arc::from("mqtt.retained"), 0, 0)),
        }
    }

    /// A record's bytes: its payload and its owner header.
    fn bytes(owner: &str, payload: &str) -> u64 {
        (HEADER_OWNER.len() + owner.len() + payload.len()) as u64
    }

    #[test]
    fn each_owner_is_counted_through_replacements_takeovers_and_deletions() {
        let owners = RetainedOwners::default();
        let change = |topic: &str, owner: Option<&str>, payload: &str| {
            owners.on_change(topic, Some(&retained(owner, payload)), &read(1));
        };
        change("a/1", Some("alice"), "12345");
        change("a/2", Some("alice"), "123");
        change("b/1", Some("bob"), "1");
        change("x/1", None, "unowned");
        let alice = |messages, bytes| Retained { messages, bytes };
        assert_eq!(
            owners.of("alice"),
            alice(2, bytes("alice", "12345") + bytes("alice", "123"))
        );

        // Replacing one's own changes the bytes only; taking bob's topic moves it to alice.
        change("a/1", Some("alice"), "1");
        assert_eq!(
            owners.of("alice"),
            alice(2, bytes("alice", "1") + bytes("alice", "123"))
        );
        change("b/1", Some("alice"), "22");
        let held = bytes("alice", "1") + bytes("alice", "123") + bytes("alice", "22");
        assert_eq!(owners.of("alice"), alice(3, held));
        assert_eq!(owners.of("bob"), Retained::default());

        // What a publish would make of the totals, without changing them.
        assert_eq!(
            owners.retaining("alice", "a/2", 100).1,
            alice(3, held - bytes("alice", "123") + 100)
        );
        assert_eq!(
            owners.retaining("alice", "new", 100).1,
            alice(4, held + 100)
        );
        assert_eq!(owners.retaining("carol", "a/2", 1).1, alice(1, 1));

        for topic in ["a/1", "a/2", "b/1", "x/1"] {
            owners.on_change(topic, None, &read(1));
        }
        assert_eq!(owners.of("alice"), Retained::default());
        let state = owners.state.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(state.by_topic.is_empty() && state.by_owner.is_empty());
    }

    /// The table read again from the start forgets what it held without a change per key: the
    /// counts start over with the new read.
    #[test]
    fn a_new_read_of_the_table_starts_the_counts_over() {
        let owners = RetainedOwners::default();
        owners.on_change("a/1", Some(&retained(Some("alice"), "x")), &read(1));
        owners.on_change("a/2", Some(&retained(Some("alice"), "x")), &read(1));
        // The new read holds a/1 only (a/2 was deleted where it reads now).
        owners.on_change("a/1", Some(&retained(Some("alice"), "x")), &read(2));
        assert_eq!(owners.of("alice").messages, 1);
        owners.on_change("a/1", None, &read(2));
        assert_eq!(owners.of("alice"), Retained::default());
    }
}
