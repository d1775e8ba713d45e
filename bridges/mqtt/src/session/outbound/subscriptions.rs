//! The client's subscriptions and what follows from them without I/O: what a filter means (its
//! shared group, the Kafka topics it reads, the QoS granted), which readers it needs, which
//! subscriptions a record matches and how it is delivered to them, and how SUBACK answers.

use rumqttd::protocol::{Filter, QoS, RetainForwardRule, SubscribeReasonCode};

use crate::{
    codec::Version,
    mapping::{self, Message, Routes},
    store::sessions::StoredSubscription,
};

/// The log reader a subscription reads through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum SourceKey {
    /// The connection's reader of one Kafka topic (non-shared subscriptions).
    Topic(String),
    /// A shared subscription's group.
    Share(String),
}

/// One subscription, as stored and as understood.
///
/// Every idle subscriber holds its subscriptions: the filter without `$share/<name>/` is a place
/// in the stored filter rather than a copy, and what only shared subscriptions have is boxed.
#[derive(Debug, Clone)]
pub(super) struct Subscription {
    /// As the session record keeps it. Private, and never changed: `filter_at` is a place in
    /// its filter.
    stored: StoredSubscription,
    /// Where the filter without `$share/<name>/` starts in the stored one.
    filter_at: usize,
    /// For a `$share/...` filter: the share's name and its group.
    share: Option<Box<Share>>,
    /// The QoS granted.
    pub(super) qos: QoS,
    /// The Kafka topics the filter reads.
    pub(super) kafka_topics: Vec<String>,
}

/// What a shared subscription reads through.
#[derive(Debug, Clone)]
struct Share {
    /// The share's name as the client wrote it (`<name>` in `$share/<name>/<filter>`), which the
    /// policy's `groups` decide.
    name: String,
    /// The shared group's name.
    group: String,
}

impl Subscription {
    /// What a stored subscription means: its filter without `$share/<group>/`, its shared group, the
    /// Kafka topics it reads and the QoS it is granted; refused if the filter is not valid.
    pub(super) fn of(
        routes: &Routes,
        stored: StoredSubscription,
    ) -> Result<Self, SubscribeReasonCode> {
        let (share_name, filter) = match mapping::parse_share(&stored.filter) {
            Some((name, filter)) if !name.is_empty() && !name.contains(['+', '#']) => {
                (Some(name), filter)
            }
            Some(_) => return Err(SubscribeReasonCode::TopicFilterInvalid),
            None if stored.filter.starts_with("$share/") => {
                return Err(SubscribeReasonCode::TopicFilterInvalid);
            }
            None => (None, stored.filter.as_str()),
        };
        if !mapping::valid_filter(filter) {
            return Err(SubscribeReasonCode::TopicFilterInvalid);
        }
        let share = share_name.map(|name| {
            Box::new(Share {
                name: name.to_owned(),
                group: mapping::share_group(name, filter),
            })
        });
        let mut qos = rumqttd::protocol::qos(stored.qos).unwrap_or(QoS::AtMostOnce);
        if share.is_some() {
            // A shared QoS 2 delivery cut off before PUBREC must be completed with the same client
            // and go to no other [MQTT-4.8.2-4, 4.8.2-5], but the shared Kafka group hands an
            // unacknowledged record to another member. QoS 1 allows that, so that is what is
            // granted (a server may grant less than asked, [MQTT-3.8.4-6]).
            qos = mapping::min_qos(qos, QoS::AtLeastOnce);
        }
        Ok(Self {
            kafka_topics: routes.topics_for_filter(filter),
            filter_at: stored.filter.len() - filter.len(),
            share,
            stored,
            qos,
        })
    }

    /// As the session record keeps it.
    pub(super) fn stored(&self) -> &StoredSubscription {
        &self.stored
    }

    /// The filter without `$share/<name>/`.
    pub(super) fn filter(&self) -> &str {
        &self.stored.filter[self.filter_at..]
    }

    /// The share's name as the client wrote it, for a shared subscription.
    pub(super) fn share_name(&self) -> Option<&str> {
        self.share.as_ref().map(|share| share.name.as_str())
    }

    /// The shared group's name, for a shared subscription.
    pub(super) fn share_group(&self) -> Option<&str> {
        self.share.as_ref().map(|share| share.group.as_str())
    }

    /// Are the retained messages it matches sent on the SUBSCRIBE that made it? As the client's
    /// retain handling asks (`existed`: the filter was subscribed to already); never for a shared
    /// subscription.
    pub(super) fn sends_retained(&self, rule: RetainForwardRule, existed: bool) -> bool {
        let asked = match rule {
            RetainForwardRule::OnEverySubscribe => true,
            RetainForwardRule::OnNewSubscribe => !existed,
            RetainForwardRule::Never => false,
        };
        asked && self.share.is_none()
    }

    /// A retained message as this subscription gets it: flagged retained, at no more than its QoS.
    pub(super) fn retained(&self, mut message: Message) -> Message {
        message.qos = mapping::min_qos(message.qos, self.qos);
        message.retain = true;
        message
    }

    /// The readers it needs: its shared group's, or one per Kafka topic it reads.
    pub(super) fn source_keys(&self) -> Vec<SourceKey> {
        match self.share_group() {
            Some(group) => vec![SourceKey::Share(group.to_owned())],
            None => self
                .kafka_topics
                .iter()
                .cloned()
                .map(SourceKey::Topic)
                .collect(),
        }
    }
}

/// The client's subscriptions, ordered by filter (as the client sent it).
///
/// A sorted `Vec` rather than a map: most clients have one subscription or a few, and a `BTreeMap`
/// allocates a node of eleven entries (2 KiB here) for the first; the `Vec` grows one entry at a
/// time up to a few (see [`Subscriptions::insert`]). Subscriptions per client are capped
/// (`mqtt.max_subscriptions`), so the linear insertion stays cheap.
#[derive(Debug, Default)]
pub(super) struct Subscriptions(Vec<Subscription>);

/// Up to this many subscriptions the list grows by one entry at a time, then as a `Vec` does.
const EXACT_GROWTH: usize = 4;

impl Subscriptions {
    fn find(&self, filter: &str) -> Result<usize, usize> {
        self.0
            .binary_search_by(|subscription| subscription.stored.filter.as_str().cmp(filter))
    }

    fn get(&self, filter: &str) -> Option<&Subscription> {
        self.find(filter).ok().map(|at| &self.0[at])
    }

    /// Is there a subscription to `filter`?
    pub(super) fn contains(&self, filter: &str) -> bool {
        self.find(filter).is_ok()
    }

    /// How many subscriptions there are.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// What a SUBSCRIBE asks for `filter`, as stored. A subscription made again keeps the time it
    /// was first made, where its readers start.
    pub(super) fn requested(
        &self,
        filter: &Filter,
        identifier: Option<usize>,
        now_ms: i64,
    ) -> StoredSubscription {
        StoredSubscription {
            filter: filter.path.clone(),
            qos: filter.qos as u8,
            no_local: filter.nolocal,
            retain_as_published: filter.preserve_retain,
            identifier,
            since_ms: self
                .get(&filter.path)
                .map_or(now_ms, |existing| existing.stored.since_ms),
        }
    }

    /// Adds a subscription, or replaces the one to the same filter.
    pub(super) fn insert(&mut self, subscription: Subscription) {
        match self.find(&subscription.stored.filter) {
            Ok(at) => self.0[at] = subscription,
            Err(at) => {
                if self.0.len() < EXACT_GROWTH {
                    self.0.reserve_exact(1);
                }
                self.0.insert(at, subscription);
            }
        }
    }

    /// Removes a filter; `false` if there was no such subscription.
    pub(super) fn remove(&mut self, filter: &str) -> bool {
        self.find(filter).map(|at| self.0.remove(at)).is_ok()
    }

    /// Every reader some subscription needs.
    pub(super) fn needed_sources(&self) -> Vec<SourceKey> {
        self.0.iter().flat_map(Subscription::source_keys).collect()
    }

    /// The filters of the non-shared subscriptions that read `kafka_topic`: what the gateway's
    /// shared reader of that topic matches for this connection.
    pub(super) fn filters_reading(&self, kafka_topic: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|s| s.share.is_none() && s.kafka_topics.iter().any(|t| t == kafka_topic))
            .map(|s| s.filter().to_owned())
            .collect()
    }

    /// The subscriptions as the session record keeps them.
    pub(super) fn stored(&self) -> Vec<StoredSubscription> {
        self.0
            .iter()
            .map(|subscription| subscription.stored.clone())
            .collect()
    }

    /// The subscriptions a record read through `source` matches, by its MQTT `topic`; `own` when the
    /// client published it itself (no-local subscriptions skip it).
    pub(super) fn matching(
        &self,
        source: &SourceKey,
        topic: &str,
        own: bool,
    ) -> Vec<&Subscription> {
        self.0
            .iter()
            .filter(|subscription| match source {
                SourceKey::Share(group) => subscription.share_group() == Some(group.as_str()),
                SourceKey::Topic(kafka_topic) => {
                    subscription.share.is_none()
                        && subscription.kafka_topics.contains(kafka_topic)
                        && !(own && subscription.stored.no_local)
                }
            })
            .filter(|subscription| mapping::matches(subscription.filter(), topic))
            .collect()
    }
}

/// A message as delivered to the subscriptions it matched (at least one): at the highest QoS they
/// were granted, no higher than it was published with; retained only if one of them keeps the flag
/// as published; with every subscription identifier.
pub(super) fn delivered_to(
    matched: &[&Subscription],
    mut message: Message,
) -> (Message, Vec<usize>) {
    let granted =
        matched
            .iter()
            .map(|subscription| subscription.qos)
            .fold(
                QoS::AtMostOnce,
                |a, b| if (b as u8) > (a as u8) { b } else { a },
            );
    let retain_as_published = matched
        .iter()
        .any(|subscription| subscription.stored.retain_as_published);
    let identifiers = matched
        .iter()
        .filter_map(|subscription| subscription.stored.identifier)
        .collect();
    message.qos = mapping::min_qos(message.qos, granted);
    message.retain = retain_as_published && message.retain;
    (message, identifiers)
}

/// SUBACK's reason codes as the client's version can say them: MQTT 3.1.1 knows only failure.
pub(super) fn suback_codes(
    version: Version,
    codes: Vec<SubscribeReasonCode>,
) -> Vec<SubscribeReasonCode> {
    codes
        .into_iter()
        .map(|code| match (version, code) {
            (Version::V4, SubscribeReasonCode::Success(_)) => code,
            (Version::V4, _) => SubscribeReasonCode::Failure,
            (Version::V5, _) => code,
        })
        .collect()
}
