//! The plain addressing: a record's address is its key, and a filter names one key exactly. For
//! front ends whose subscribers ask for the records of given keys (and for the hub's own tests).

use std::collections::HashMap;

use super::{Addressing, FilterIndex};
use crate::log::Record;

/// Records addressed by their key (UTF-8; a record without a key, or with a key that is not text,
/// goes to no member).
#[derive(Debug, Clone, Copy)]
pub struct ByKey {
    protocol: &'static str,
}

impl ByKey {
    /// Addressing for the front end named `protocol`.
    pub fn for_protocol(protocol: &'static str) -> Self {
        Self { protocol }
    }
}

impl Addressing for ByKey {
    fn address(&self, record: &Record) -> Option<String> {
        let key = record.key.as_deref()?;
        std::str::from_utf8(key).ok().map(str::to_owned)
    }

    fn matches(&self, filter: &str, address: &str) -> bool {
        filter == address
    }

    fn index(&self) -> Box<dyn FilterIndex> {
        Box::<KeyIndex>::default()
    }

    fn protocol(&self) -> &'static str {
        self.protocol
    }
}

/// Members by the key they named.
#[derive(Debug, Default)]
struct KeyIndex(HashMap<String, Vec<u64>>);

impl FilterIndex for KeyIndex {
    fn insert(&mut self, filter: &str, id: u64) {
        let members = self.0.entry(filter.to_owned()).or_default();
        if !members.contains(&id) {
            members.push(id);
        }
    }

    fn remove(&mut self, filter: &str, id: u64) {
        if let Some(members) = self.0.get_mut(filter) {
            members.retain(|member| *member != id);
            if members.is_empty() {
                self.0.remove(filter);
            }
        }
    }

    fn matching(&self, address: &str, out: &mut Vec<u64>) {
        out.extend(self.0.get(address).into_iter().flatten());
    }
}
