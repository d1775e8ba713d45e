//! The authorization layer: every request a client makes, whatever its protocol, is decided here
//! before anything is queued, by the [`Authorizer`] (the policy and the admin role) and the
//! gateway's protection of its own state ([`Protected`](crate::auth::Protected)).
//!
//! Each connection (or gRPC call) wraps the front end's log in its own `Authorized`, which knows
//! its principal. The front ends' own records (MQTT sessions, retained copies, QoS 2 exchanges,
//! AMQP dead letters) go through the log without this layer, as they do without `Metered`.
//!
//! MQTT clients name MQTT topics, not Kafka ones: their policy rules are MQTT filters, which the
//! MQTT front end checks itself ([`Scope::ProtectionOnly`]); which Kafka topic a route maps them
//! to is the operator's choice. This layer still keeps them off the protected state.

use std::{net::SocketAddr, sync::Arc};

use async_trait::async_trait;

use super::{Layer, Layered};
use crate::{
    Error, Result,
    auth::{
        Authorizer, Principal, Protected,
        policy::{Action, Resource, Subject},
    },
    limits::{QuotaKey, charged_to},
    log::{
        AppendReceipt, FetchLimits, Fetched, GroupDescription, GroupMember, Log, NewRecord,
        Position, SubscribeOptions, Subscription, TopicDescription, TopicFilter, TopicPartition,
        TopicSelector, TopicSpec, TopicSummary,
    },
    metrics::Protocol,
};

/// What this layer decides with the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every request, by its Kafka topic and group names (gRPC, AMQP).
    KafkaNames,
    /// Only the protection of internal state: the front end checks its own names against the
    /// policy (MQTT).
    ProtectionOnly,
}

/// Decides a principal's requests.
#[derive(Debug, Clone)]
pub struct Authorization {
    authorizer: Authorizer,
    principal: Principal,
    client_id: Option<String>,
    protocol: &'static str,
    scope: Scope,
    /// Whose share the topics its requests create come from (`topics.auto_create_per_minute`),
    /// and through which protocol.
    account: Arc<(QuotaKey, Protocol)>,
}

/// A log whose requests are one principal's.
pub type Authorized<L> = Layered<Authorization, L>;

impl<L> Authorized<L> {
    /// `inner` as `principal` (with `client_id`, for `%c` in rules) sees it through `protocol`.
    pub fn new(
        inner: L,
        authorizer: Authorizer,
        principal: Principal,
        client_id: Option<String>,
        protocol: &'static str,
        scope: Scope,
    ) -> Self {
        let account = Arc::new((
            principal.account_key(client_id.as_deref(), None),
            protocol_named(protocol),
        ));
        Layered::over(
            Authorization {
                authorizer,
                principal,
                client_id,
                protocol,
                scope,
                account,
            },
            inner,
        )
    }

    /// The same, for a client at `peer`: an anonymous client without a client id is known by
    /// its address, as for quotas.
    pub fn calling_from(self, peer: Option<SocketAddr>) -> Self {
        self.map_layer(|mut layer| {
            let key = layer
                .principal
                .account_key(layer.client_id.as_deref(), peer);
            layer.account = Arc::new((key, layer.account.1));
            layer
        })
    }
}

/// The metrics' protocol of a front end named `name` (gRPC for a name no front end has).
fn protocol_named(name: &str) -> Protocol {
    Protocol::ALL
        .into_iter()
        .find(|protocol| protocol.name() == name)
        .unwrap_or(Protocol::Grpc)
}

impl Authorization {
    /// `request` charged to the caller's account: the topics it creates by naming them are
    /// taken from its share.
    async fn charged<F: std::future::Future>(&self, request: F) -> F::Output {
        charged_to(self.account.clone(), request).await
    }

    fn subject(&self) -> Subject<'_> {
        Subject {
            principal: &self.principal,
            client_id: self.client_id.as_deref(),
        }
    }

    fn is_admin(&self) -> bool {
        self.authorizer.is_admin(&self.principal)
    }

    /// The policy's answer, where this layer asks the policy.
    fn policy(&self, action: Action, resource: Resource<'_>) -> Result<()> {
        if self.scope == Scope::ProtectionOnly {
            return Ok(());
        }
        self.authorizer
            .check(self.protocol, self.subject(), action, resource)
    }

    fn refuse(&self, action: Action, resource: Resource<'_>, reason: String) -> Error {
        self.authorizer
            .denied(self.protocol, &self.principal, action, &resource, reason)
    }

    /// `action` on `topic`: protected topics for admins only, then the policy.
    fn topic(&self, action: Action, topic: &str) -> Result<()> {
        self.authorizer
            .protect_topic(self.protocol, &self.principal, action, topic)?;
        self.policy(action, Resource::Topic(topic))
    }

    /// `action` on `group`: another protocol's groups for admins only, then the policy.
    fn group(&self, action: Action, group: &str) -> Result<()> {
        self.authorizer
            .protect_group(self.protocol, &self.principal, action, group)?;
        self.policy(action, Resource::Group(group))
    }

    /// Records may not carry another protocol's headers: a subscriber of that protocol would take
    /// them as its own front end's.
    fn headers(&self, topic: &str, records: &[NewRecord]) -> Result<()> {
        let forged = records
            .iter()
            .flat_map(|record| &record.headers)
            .find_map(|header| {
                Protected::header_owner(&header.key)
                    .filter(|owner| *owner != self.protocol)
                    .map(|owner| (header.key.as_str(), owner))
            });
        match forged {
            Some((key, owner)) => Err(self.refuse(
                Action::Produce,
                Resource::Topic(topic),
                format!("header {key:?} is reserved for the {owner} front end"),
            )),
            None => Ok(()),
        }
    }

    /// Whether a listing shows `topic`: asked without counting or logging a refusal, since hiding
    /// what one may not see is not an attempt to see it.
    fn lists_topic(&self, topic: &str) -> bool {
        match self.scope {
            Scope::KafkaNames => {
                self.authorizer
                    .allows_topic(self.subject(), Action::Describe, topic)
            }
            Scope::ProtectionOnly => self.is_admin() || !self.authorizer.protected().topic(topic),
        }
    }

    /// A regex subscription restricted to what this principal may read. Which topics a regex
    /// matches is known only when the backend lists them, so the pattern carries the test: a topic
    /// it matches is read only if this principal may read it by name (not internal state; the
    /// policy, in Kafka's terms), and if a restriction it already had allows it too.
    fn restrict(&self, pattern: regex::Regex, earlier: Option<TopicFilter>) -> TopicSelector {
        let (authorizer, principal) = (self.authorizer.clone(), self.principal.clone());
        let client_id = self.client_id.clone();
        let policy = self.scope == Scope::KafkaNames;
        let allowed = TopicFilter::new(move |topic| {
            let subject = Subject {
                principal: &principal,
                client_id: client_id.as_deref(),
            };
            let mine = if policy {
                authorizer.allows_topic(subject, Action::Consume, topic)
            } else {
                !authorizer.protected().topic(topic)
            };
            mine && earlier
                .as_ref()
                .is_none_or(|earlier| earlier.accepts(topic))
        });
        TopicSelector::Restricted { pattern, allowed }
    }

    /// [`Authorization::lists_topic`] for a group.
    fn lists_group(&self, group: &str) -> bool {
        let subject = self.subject();
        match self.scope {
            Scope::KafkaNames => {
                self.authorizer
                    .allows_group(self.protocol, subject, Action::Describe, group)
            }
            Scope::ProtectionOnly => {
                self.is_admin()
                    || Protected::group_owner(group).is_none_or(|owner| owner == self.protocol)
            }
        }
    }
}

#[async_trait]
impl Layer for Authorization {
    async fn submit(
        &self,
        inner: &dyn Log,
        topic: &str,
        records: Vec<NewRecord>,
    ) -> Result<AppendReceipt> {
        self.topic(Action::Produce, topic)?;
        self.headers(topic, &records)?;
        self.charged(inner.submit(topic, records)).await
    }

    async fn subscribe(
        &self,
        inner: &dyn Log,
        mut options: SubscribeOptions,
    ) -> Result<Subscription> {
        match &options.topics {
            TopicSelector::Names(names) => {
                for topic in names {
                    self.topic(Action::Consume, topic)?;
                }
            }
            _ if self.is_admin() => {}
            TopicSelector::Pattern(pattern) => {
                options.topics = self.restrict(pattern.clone(), None);
            }
            TopicSelector::Restricted { pattern, allowed } => {
                options.topics = self.restrict(pattern.clone(), Some(allowed.clone()));
            }
        }
        if let Some(group) = &options.group {
            self.group(Action::JoinGroup, group)?;
        }
        self.charged(inner.subscribe(options)).await
    }

    async fn create_topic(&self, inner: &dyn Log, spec: TopicSpec) -> Result<TopicDescription> {
        self.topic(Action::CreateTopic, &spec.name)?;
        inner.create_topic(spec).await
    }

    async fn delete_topic(&self, inner: &dyn Log, topic: &str) -> Result<()> {
        self.topic(Action::DeleteTopic, topic)?;
        inner.delete_topic(topic).await
    }

    async fn describe_topic(&self, inner: &dyn Log, topic: &str) -> Result<TopicDescription> {
        self.topic(Action::Describe, topic)?;
        inner.describe_topic(topic).await
    }

    async fn copies_of(&self, inner: &dyn Log, topic: &str) -> Result<Vec<String>> {
        self.topic(Action::Describe, topic)?;
        let mut copies = inner.copies_of(topic).await?;
        copies.retain(|copy| self.lists_topic(copy));
        Ok(copies)
    }

    async fn open_topic(&self, inner: &dyn Log, topic: &str) -> Result<TopicDescription> {
        // What the opener then does (send or receive) is decided on that request; opening only
        // needs to know the topic, which must not be internal.
        self.authorizer
            .protect_topic(self.protocol, &self.principal, Action::Describe, topic)?;
        self.charged(inner.open_topic(topic)).await
    }

    async fn fetch(
        &self,
        inner: &dyn Log,
        partition: &TopicPartition,
        offset: i64,
        limits: FetchLimits,
    ) -> Result<Fetched> {
        self.topic(Action::Consume, &partition.topic)?;
        inner.fetch(partition, offset, limits).await
    }

    async fn resolve(
        &self,
        inner: &dyn Log,
        partition: &TopicPartition,
        position: Position,
    ) -> Result<i64> {
        self.topic(Action::Describe, &partition.topic)?;
        inner.resolve(partition, position).await
    }

    async fn commit(
        &self,
        inner: &dyn Log,
        group: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<()> {
        self.group(Action::Commit, group)?;
        for (partition, _) in offsets {
            self.topic(Action::Consume, &partition.topic)?;
        }
        inner.commit(group, offsets).await
    }

    async fn list_topics(&self, inner: &dyn Log) -> Result<Vec<TopicSummary>> {
        let mut topics = inner.list_topics().await?;
        topics.retain(|topic| self.lists_topic(&topic.name));
        Ok(topics)
    }

    async fn list_groups(&self, inner: &dyn Log) -> Result<Vec<String>> {
        let mut groups = inner.list_groups().await?;
        groups.retain(|group| self.lists_group(group));
        Ok(groups)
    }

    async fn describe_group(&self, inner: &dyn Log, group: &str) -> Result<GroupDescription> {
        self.group(Action::Describe, group)?;
        inner.describe_group(group).await
    }

    async fn group_members(&self, inner: &dyn Log, group: &str) -> Result<Vec<GroupMember>> {
        self.group(Action::Describe, group)?;
        inner.group_members(group).await
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use bytes::Bytes;

    use super::*;
    use crate::{
        auth::{Source, policy::Policy},
        log::{FetchLimits, Header, Position, SubscriptionEvent, TopicPartition},
        testing,
    };

    const POLICY: &str = r#"
        [[rules]]
        who = ["alice"]
        allow = ["produce", "consume", "join_group", "describe", "commit"]
        topics = ["orders*"]
        groups = ["%u-*"]
    "#;

    fn protected() -> Protected {
        Protected::new(["mqtt.sessions".to_owned()])
    }

    fn principal(name: &str, roles: &[&str]) -> Principal {
        Principal::new(
            name,
            roles.iter().map(|role| (*role).to_owned()).collect(),
            Source::Password,
        )
    }

    fn as_(
        log: &Arc<dyn Log>,
        authorizer: &Authorizer,
        who: Principal,
        protocol: &'static str,
    ) -> Authorized<Arc<dyn Log>> {
        Authorized::new(
            log.clone(),
            authorizer.clone(),
            who,
            None,
            protocol,
            Scope::KafkaNames,
        )
    }

    fn forbidden<T: std::fmt::Debug>(outcome: Result<T>) -> String {
        match outcome {
            Err(error @ Error::Forbidden { .. }) => error.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn record(headers: &[&str]) -> NewRecord {
        NewRecord {
            headers: headers
                .iter()
                .map(|key| Header {
                    key: (*key).to_owned(),
                    value: Bytes::from_static(b"x"),
                })
                .collect(),
            ..NewRecord::with_value("v")
        }
    }

    async fn stored(log: &Arc<dyn Log>, topic: &str) -> usize {
        log.fetch(&TopicPartition::new(topic, 0), 0, FetchLimits::default())
            .await
            .map_or(0, |fetched| fetched.records.len())
    }

    #[tokio::test]
    async fn internal_state_is_only_its_protocols_and_admins() {
        let dir = tempfile::tempdir().unwrap();
        let log = testing::embedded(dir.path()).await.unwrap();
        log.create_topic(TopicSpec::named("mqtt.sessions").compacted())
            .await
            .unwrap();
        let authorizer = Authorizer::open(protected());
        let grpc = as_(&log, &authorizer, principal("mallory", &[]), "grpc");

        let refused = forbidden(grpc.append("mqtt.sessions", vec![record(&[])]).await);
        assert!(
            refused.contains("mallory may not produce topic \"mqtt.sessions\""),
            "{refused}"
        );
        forbidden(grpc.describe_topic("mqtt.sessions").await);
        forbidden(grpc.open_topic("mqtt.sessions").await);
        let partition = TopicPartition::new("mqtt.sessions", 0);
        forbidden(grpc.fetch(&partition, 0, FetchLimits::default()).await);
        let everything = SubscribeOptions {
            topics: TopicSelector::Pattern(regex::Regex::new("^(?:.*)$").unwrap()),
            group: None,
            start: Position::Earliest,
            max_in_flight: 10,
            client: "test".into(),
            protocol: "grpc",
        };
        // Skipping a device's queue by committing its session group.
        log.create_topic(TopicSpec::named("t")).await.unwrap();
        let offsets = [(TopicPartition::new("t", 0), 5)];
        let refused = forbidden(grpc.commit("mqtt.session.device-1.t", &offsets).await);
        assert!(refused.contains("mqtt"), "{refused}");
        // Another protocol's headers: a subscriber of that protocol would trust them.
        let refused = forbidden(grpc.append("t", vec![record(&["mqtt-topic"])]).await);
        assert!(refused.contains("\"mqtt-topic\""), "{refused}");
        forbidden(grpc.append("t", vec![record(&["dlq-topic"])]).await);
        assert_eq!(stored(&log, "mqtt.sessions").await, 0);
        assert_eq!(stored(&log, "t").await, 0);
        let listed = grpc.list_topics().await.unwrap();
        assert!(listed.iter().all(|topic| topic.name != "mqtt.sessions"));

        // The owning protocol may use its groups and headers; an admin may do anything.
        let mqtt = as_(&log, &authorizer, principal("device-1", &[]), "mqtt");
        mqtt.append("t", vec![record(&["mqtt-topic"])])
            .await
            .unwrap();
        mqtt.commit("mqtt.session.device-1.t", &offsets)
            .await
            .unwrap();
        forbidden(mqtt.append("t", vec![record(&["amqp-body"])]).await);
        let admin = as_(&log, &authorizer, principal("ops", &["admin"]), "grpc");
        admin
            .append("mqtt.sessions", vec![record(&[])])
            .await
            .unwrap();
        assert_eq!(stored(&log, "mqtt.sessions").await, 1);

        // A pattern that matches everything reads what its subscriber may read, and no more; a
        // selector its caller restricted already is narrowed the same way, never widened.
        let lenient = SubscribeOptions {
            topics: TopicSelector::Restricted {
                pattern: regex::Regex::new("^(?:.*)$").unwrap(),
                allowed: TopicFilter::new(|_| true),
            },
            ..everything.clone()
        };
        for options in [everything, lenient] {
            let reader = grpc.subscribe(options).await.unwrap();
            assert_eq!(topics_read(reader).await, ["t"]);
        }
    }

    /// The topics of the first records `reader` delivers; then checks nothing else arrives.
    async fn topics_read(mut reader: Subscription) -> Vec<String> {
        let mut seen = Vec::new();
        while seen.is_empty() {
            let event = tokio::time::timeout(Duration::from_secs(10), reader.next_event())
                .await
                .expect("the pattern subscriber reads what it may")
                .expect("open");
            if let SubscriptionEvent::Records(records) = event {
                seen.extend(records.into_iter().map(|record| record.topic.to_string()));
            }
        }
        let more = tokio::time::timeout(Duration::from_millis(300), reader.next_event()).await;
        assert!(
            !matches!(more, Ok(Some(SubscriptionEvent::Records(_)))),
            "{more:?}"
        );
        reader.close().await.unwrap();
        seen
    }

    #[tokio::test]
    async fn the_policy_decides_and_a_denied_request_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = testing::embedded(dir.path()).await.unwrap();
        for topic in ["orders", "payments"] {
            log.create_topic(TopicSpec::named(topic)).await.unwrap();
        }
        let policy = Policy::parse(POLICY).unwrap();
        let authorizer = Authorizer::with_policy(policy, protected(), "admin");
        let alice = as_(&log, &authorizer, principal("alice", &[]), "grpc");
        alice.append("orders", vec![record(&[])]).await.unwrap();
        let refused = forbidden(alice.append("payments", vec![record(&[])]).await);
        assert!(
            refused.contains("alice may not produce topic \"payments\": no rule"),
            "{refused}"
        );
        assert_eq!(stored(&log, "payments").await, 0);
        let subscribe = |group: &str| SubscribeOptions {
            topics: TopicSelector::Names(vec!["orders".into()]),
            group: Some(group.to_owned()),
            start: Position::Earliest,
            max_in_flight: 10,
            client: "test".into(),
            protocol: "grpc",
        };
        forbidden(alice.subscribe(subscribe("bob-reports")).await);
        alice
            .subscribe(subscribe("alice-reports"))
            .await
            .unwrap()
            .close()
            .await
            .unwrap();
        forbidden(alice.create_topic(TopicSpec::named("orders-2")).await);
        let topics: Vec<_> = alice
            .list_topics()
            .await
            .unwrap()
            .into_iter()
            .map(|topic| topic.name)
            .collect();
        assert_eq!(topics, ["orders"]);

        // Someone the policy does not name may do nothing; an admin anything.
        let bob = as_(&log, &authorizer, principal("bob", &[]), "grpc");
        forbidden(bob.append("orders", vec![record(&[])]).await);
        let admin = as_(&log, &authorizer, principal("ops", &["admin"]), "grpc");
        admin
            .create_topic(TopicSpec::named("orders-2"))
            .await
            .unwrap();

        // MQTT clients are decided on MQTT names by their front end, not on Kafka topics here.
        let device = Authorized::new(
            log.clone(),
            authorizer.clone(),
            principal("device-1", &[]),
            Some("device-1".into()),
            "mqtt",
            Scope::ProtectionOnly,
        );
        device.append("payments", vec![record(&[])]).await.unwrap();
        assert_eq!(stored(&log, "payments").await, 1);
    }
}
