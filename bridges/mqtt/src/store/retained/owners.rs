//! Who retains what: how many retained messages, and how many payload bytes, each account holds,
//! kept from the retained table as it changes. Every replica follows the same table, so every
//! replica holds a principal to the same caps (`mqtt.max_retained_per_principal`,
//! `mqtt.max_retained_bytes_per_principal`), whichever replica its clients publish through.
//!
//! An account is a principal by name, or an anonymous client by its client id, as for quotas
//! ([`Principal::account_key`](courier_gateway::auth::Principal::account_key)). Its name is stored
//! with each retained message (the `mqtt-owner` header); messages retained before owners were
//! stored, or written by others than the bridge, belong to nobody and count for nobody.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::{Arc, Mutex, PoisonError},
};

use courier_gateway::log::Record;

use crate::mapping::HEADER_OWNER;

/// What one account retains.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    /// Retained messages.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// The accounts' retained messages, by account and by topic.
#[derive(Debug, Default)]
pub struct RetainedOwners {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Each retained topic's owner and payload size.
    by_topic: HashMap<String, (Arc<str>, u64)>,
    /// Each owner's totals; an owner holding nothing is removed.
    by_owner: HashMap<Arc<str>, Retained>,
}

impl RetainedOwners {
    /// Applies a change of the retained table: `topic`'s newest record, `None` once deleted.
    pub fn on_change(&self, topic: &str, record: Option<&Record>) {
        let owner = record.and_then(|record| {
            let header = record.headers.iter().find(|h| h.key == HEADER_OWNER)?;
            let owner = std::str::from_utf8(&header.value).ok()?;
            Some((owner, record.value.as_ref().map_or(0, |v| v.len() as u64)))
        });
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.release(topic);
        if let Some((owner, bytes)) = owner {
            state.hold(topic, owner, bytes);
        }
    }

    /// What `owner` would retain once `topic`'s retained message is its own of `bytes`.
    pub fn after_retaining(&self, owner: &str, topic: &str, bytes: u64) -> Retained {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut totals = state.by_owner.get(owner).copied().unwrap_or_default();
        match state.by_topic.get(topic) {
            Some((held_by, held)) if &**held_by == owner => {
                totals.bytes = totals.bytes.saturating_sub(*held);
            }
            _ => totals.messages += 1,
        }
        totals.bytes += bytes;
        totals
    }

    /// What `owner` retains now.
    pub fn of(&self, owner: &str) -> Retained {
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

    #[test]
    fn each_owner_is_counted_through_replacements_takeovers_and_deletions() {
        let owners = RetainedOwners::default();
        owners.on_change("a/1", Some(&retained(Some("alice"), "12345")));
        owners.on_change("a/2", Some(&retained(Some("alice"), "123")));
        owners.on_change("b/1", Some(&retained(Some("bob"), "1")));
        owners.on_change("x/1", Some(&retained(None, "unowned")));
        assert_eq!(
            owners.of("alice"),
            Retained {
                messages: 2,
                bytes: 8
            }
        );

        // Replacing one's own changes the bytes only; taking bob's topic moves it to alice.
        owners.on_change("a/1", Some(&retained(Some("alice"), "1")));
        assert_eq!(
            owners.of("alice"),
            Retained {
                messages: 2,
                bytes: 4
            }
        );
        owners.on_change("b/1", Some(&retained(Some("alice"), "22")));
        assert_eq!(
            owners.of("alice"),
            Retained {
                messages: 3,
                bytes: 6
            }
        );
        assert_eq!(owners.of("bob"), Retained::default());

        // What a publish would make of the totals, without changing them.
        assert_eq!(
            owners.after_retaining("alice", "a/2", 10),
            Retained {
                messages: 3,
                bytes: 13
            }
        );
        assert_eq!(
            owners.after_retaining("alice", "new", 10),
            Retained {
                messages: 4,
                bytes: 16
            }
        );
        assert_eq!(
            owners.after_retaining("carol", "a/2", 1),
            Retained {
                messages: 1,
                bytes: 1
            }
        );

        for topic in ["a/1", "a/2", "b/1", "x/1"] {
            owners.on_change(topic, None);
        }
        assert_eq!(owners.of("alice"), Retained::default());
        let state = owners.state.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(state.by_topic.is_empty() && state.by_owner.is_empty());
    }
}
