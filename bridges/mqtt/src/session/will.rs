//! Publishing a will: after its delay, unless its client came back, as the connection that set it
//! would have published it.
//!
//! A will is a publish of its connection's principal, so it takes the same path as that
//! connection's own publishes: through the connection's log (its authorization layer keeps it off
//! the gateway's internal state, even by a route, and refuses another protocol's headers such as
//! `amqp-*` and `dlq-*` among its user properties; the metrics layer counts it as a message in).
//! CONNECT checked its topic against the policy, but the will goes out later, perhaps much later:
//! the policy is asked again just before, and a will it now denies is dropped (the authorizer
//! counts and audits the denial).

use std::sync::Arc;

use courier_gateway::{
    auth::{
        Principal,
        policy::{Action, Resource, Subject},
    },
    log::{Log, now_ms},
};

use super::admission::Will;
use crate::{
    bridge::Bridge,
    error::{Error, Result},
    mapping,
};

/// A will that is due (its connection ended without a normal DISCONNECT), and who it is
/// published as.
#[derive(Debug)]
pub(super) struct DueWill {
    pub(super) will: Will,
    /// The client id of the connection that set it.
    pub(super) client_id: String,
    /// The connection that set it, by the id its session record carries.
    pub(super) connection: String,
    /// Who that connection authenticated as.
    pub(super) principal: Arc<Principal>,
    /// That connection's log: the bridge's, behind the connection's authorization layer.
    pub(super) log: Arc<dyn Log>,
}

impl DueWill {
    /// Publishes the will after its delay, unless the client came back in the meantime (here or
    /// on another replica, which shows as a newer session record).
    pub(super) async fn publish_later(self, bridge: Arc<Bridge>) {
        if !self.will.delay.is_zero() {
            tokio::time::sleep(self.will.delay).await;
            let returned = bridge.takeover.is_connected(&self.client_id)
                || matches!(
                    bridge.sessions.load(&self.client_id).await,
                    Ok(Some(record)) if record.connection != self.connection
                );
            if returned {
                return;
            }
        }
        let client_id = self.client_id.as_str();
        let topic = self.will.message.topic.as_str();
        match self.publish(&bridge).await {
            Ok(()) => tracing::debug!(client_id, topic, "will published"),
            Err(Error::Log(error @ courier_gateway::Error::Forbidden { .. })) => {
                tracing::info!(%error, client_id, topic, "will not authorized; dropped");
            }
            Err(error) => tracing::warn!(%error, client_id, topic, "could not publish the will"),
        }
    }

    /// Publishes the will now, if the policy as it is now allows it.
    async fn publish(&self, bridge: &Bridge) -> Result<()> {
        let message = &self.will.message;
        let subject = Subject {
            principal: &self.principal,
            client_id: Some(&self.client_id),
        };
        bridge.access.authorizer.check(
            "mqtt",
            subject,
            Action::Produce,
            Resource::MqttTopic(&message.topic),
        )?;
        let record =
            mapping::to_record(message, &self.client_id, now_ms()).map_err(Error::Refused)?;
        // A retained will counts against its client's retained caps as its publishes do; past
        // them it is published without being retained, as a QoS 0 publish would be.
        let mut owner = message.retain.then(|| {
            self.principal
                .account_key(Some(&self.client_id), None)
                .to_string()
        });
        if let Some(account) = &owner
            && let Err(refusal) = bridge
                .retained
                .admit(account, &message.topic, &record)
                .await
        {
            tracing::info!(reason = %refusal.text, "will published without retaining it");
            owner = None;
        }
        let retained_record = owner.map(|owner| (record.clone(), owner));
        let topic = bridge.routes.topic_for(&message.topic);
        self.log.append(topic, vec![record]).await?;
        if let Some((record, owner)) = retained_record {
            bridge.retained.submit(record, &owner).await?.await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use courier_gateway::{
        auth::{Access, Authorizer, Protected, Source, policy::Policy},
        log::{
            FetchLimits, TopicPartition,
            layers::{Authorized, Scope},
        },
        testing,
    };
    use rumqttd::protocol::{PublishProperties, QoS};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        config::{Config, Route},
        mapping::Message,
    };

    /// Devices may publish under `devices/<their client id>/`, and `leak/#` (routed to the
    /// gateway's session topic).
    const POLICY: &str = r#"
        [[rules]]
        who = ["*"]
        allow = ["produce"]
        mqtt = ["devices/%c/#", "leak/#"]
    "#;

    struct Fixture {
        bridge: Arc<Bridge>,
        log: Arc<dyn Log>,
        _stop: tokio_util::sync::DropGuard,
        _dir: tempfile::TempDir,
    }

    async fn fixture(policy: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let log = testing::embedded(dir.path()).await.unwrap();
        let protected =
            Protected::new(["mqtt.sessions", "mqtt.retained", "mqtt.qos2"].map(String::from));
        let access = Access {
            authorizer: Authorizer::with_policy(
                Policy::parse(policy).unwrap(),
                protected.clone(),
                "admin",
            ),
            ..Access::loopback("mqtt", protected)
        };
        let config = Config {
            routes: vec![Route {
                filter: "leak/#".into(),
                topic: "mqtt.sessions".into(),
            }],
            ..Config::default()
        };
        let stop = CancellationToken::new();
        let bridge = Bridge::start(log.clone(), config, access, stop.clone())
            .await
            .unwrap();
        Fixture {
            bridge,
            log,
            _stop: stop.drop_guard(),
            _dir: dir,
        }
    }

    /// The will of `device-1` (principal `alice`) on `topic` with `user_properties`, published
    /// through that connection's log.
    fn due(
        fixture: &Fixture,
        topic: &str,
        payload: &'static [u8],
        user_properties: &[(&str, &str)],
    ) -> DueWill {
        let principal = Principal::new("alice", Vec::new(), Source::Password);
        DueWill {
            will: Will {
                message: Message {
                    topic: topic.into(),
                    payload: Bytes::from_static(payload),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: PublishProperties {
                        user_properties: user_properties
                            .iter()
                            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                            .collect(),
                        ..PublishProperties::default()
                    },
                },
                delay: Duration::ZERO,
            },
            client_id: "device-1".into(),
            connection: "c1".into(),
            log: Arc::new(Authorized::new(
                fixture.bridge.publish.clone(),
                fixture.bridge.access.authorizer.clone(),
                principal.clone(),
                Some("device-1".into()),
                "mqtt",
                Scope::ProtectionOnly,
            )),
            principal: Arc::new(principal),
        }
    }

    async fn values_of(log: &Arc<dyn Log>, topic: &str) -> Vec<Bytes> {
        let description = log.describe_topic(topic).await.unwrap();
        let mut values = Vec::new();
        for partition in description.partitions {
            let fetched = log
                .fetch(
                    &TopicPartition::new(topic, partition.partition),
                    partition.low,
                    FetchLimits::default(),
                )
                .await
                .unwrap();
            values.extend(
                fetched
                    .records
                    .into_iter()
                    .filter_map(|record| record.value),
            );
        }
        values
    }

    fn forbidden(outcome: Result<()>) -> String {
        match outcome {
            Err(Error::Log(error @ courier_gateway::Error::Forbidden { .. })) => error.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_will_is_published_as_its_connection_would_publish() {
        let fixture = fixture(POLICY).await;
        due(&fixture, "devices/device-1/status", b"gone", &[])
            .publish(&fixture.bridge)
            .await
            .unwrap();
        let stored = values_of(&fixture.log, "mqtt.messages").await;
        assert_eq!(stored, [Bytes::from_static(b"gone")]);
    }

    #[tokio::test]
    async fn a_will_may_not_forge_another_protocols_headers() {
        let fixture = fixture(POLICY).await;
        for key in ["dlq-topic", "amqp-body"] {
            let will = due(
                &fixture,
                "devices/device-1/status",
                b"forged",
                &[(key, "x")],
            );
            let refused = forbidden(will.publish(&fixture.bridge).await);
            assert!(refused.contains(key), "{refused}");
        }
        assert!(values_of(&fixture.log, "mqtt.messages").await.is_empty());
    }

    #[tokio::test]
    async fn a_will_routed_to_internal_state_is_refused() {
        let fixture = fixture(POLICY).await;
        let will = due(&fixture, "leak/x", b"forged session", &[]);
        forbidden(will.publish(&fixture.bridge).await);
        let stored = values_of(&fixture.log, "mqtt.sessions").await;
        assert!(!stored.iter().any(|value| &value[..] == b"forged session"));
    }

    #[tokio::test]
    async fn the_policy_is_asked_again_when_the_will_goes_out() {
        // CONNECT was allowed under another policy; this one (the policy as it is when the will
        // goes out) no longer allows the topic.
        let fixture = fixture(
            r#"
            [[rules]]
            who = ["*"]
            allow = ["produce"]
            mqtt = ["elsewhere/#"]
            "#,
        )
        .await;
        let will = due(&fixture, "devices/device-1/status", b"late", &[]);
        let refused = forbidden(will.publish(&fixture.bridge).await);
        assert!(refused.contains("devices/device-1/status"), "{refused}");
        assert!(values_of(&fixture.log, "mqtt.messages").await.is_empty());
    }
}
