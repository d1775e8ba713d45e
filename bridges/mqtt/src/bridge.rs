//! What every MQTT connection of this replica shares: the Log, config, routes, who may connect and
//! what they may do, session and retained-message stores, the fan-out hubs, and the fence of live
//! connections.

use std::sync::Arc;

use courier_gateway::{
    auth::Access,
    log::{Log, TopicSpec, layers::Metered, now_ms},
    metrics::Protocol,
    readers::{
        fanout::{self, Fanout},
        table::Table,
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    addressing::MqttTopics,
    config::Config,
    error::{Error, Result},
    mapping::Routes,
    store::{
        exchanges::ExchangeStore,
        retained::{RetainedCaps, RetainedOwners, RetainedStore},
        sessions::{self, SessionOwners, SessionStore},
    },
    takeover::TakeoverFence,
};

/// The front end's name in the Log subscriptions of its shared readers.
const PROTOCOL: &str = "mqtt";

/// Shared state of the MQTT endpoint.
#[derive(Debug)]
pub struct Bridge {
    /// Where messages and the gateway's own records (sessions, retained messages, QoS 2
    /// exchanges) are stored, and subscriptions read.
    pub log: Arc<dyn Log>,
    /// The same log for what clients publish (wills included), counted as MQTT's messages in
    /// (the metrics layer). Each connection reaches it through its own authorization layer (see
    /// `session`).
    pub publish: Arc<dyn Log>,
    /// The `[mqtt]` section.
    pub config: Config,
    /// MQTT topic → Kafka topic.
    pub routes: Routes,
    /// Authentication of MQTT clients, and the gateway's authorization.
    pub access: Access,
    /// Session records.
    pub sessions: SessionStore,
    /// Retained messages.
    pub retained: RetainedStore,
    /// Unfinished QoS 2 exchanges of persistent sessions.
    pub exchanges: ExchangeStore,
    /// Shared readers for clean-session subscriptions.
    pub fanout: Fanout,
    /// Live connections here, for takeover.
    pub takeover: Arc<TakeoverFence>,
}

impl Bridge {
    /// Checks the config, creates the bridge's topics if missing, and starts following the session and
    /// retained-message topics. Background readers stop when `cancel` fires. `access` decides who
    /// connects and what they may do.
    pub async fn start(
        log: Arc<dyn Log>,
        config: Config,
        access: Access,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>> {
        let routes = Routes::new(config.routes.clone(), config.messages_topic.clone())
            .map_err(Error::Config)?;

        let mut topics = vec![TopicSpec::named(&config.messages_topic)];
        topics.extend(
            config
                .routes
                .iter()
                .map(|route| TopicSpec::named(&route.topic)),
        );
        topics.push(TopicSpec::named(&config.retained_topic).compacted());
        topics.push(TopicSpec::named(&config.sessions_topic).compacted());
        topics.push(TopicSpec::named(&config.qos2_topic).compacted());
        for spec in topics {
            match log.create_topic(spec).await {
                Ok(_) | Err(courier_gateway::Error::TopicExists { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }

        let takeover = Arc::new(TakeoverFence::default());
        takeover.keep_sweeping(cancel.clone());
        let session_owners = Arc::new(SessionOwners::default());
        let count_sessions = config.max_sessions_per_principal > 0;
        let session_table = Table::start(
            log.clone(),
            PROTOCOL,
            &config.sessions_topic,
            Box::new({
                let (takeover, owners) = (takeover.clone(), session_owners.clone());
                move |client_id, record, version| {
                    let session = match record.and_then(|record| record.value.as_ref()) {
                        None => None,
                        Some(value) => match sessions::decode(client_id, value) {
                            Ok(session) => Some(session),
                            Err(error) => {
                                tracing::warn!(%error, "skipping a session record");
                                // What the client id held before is not its session any more.
                                if count_sessions {
                                    owners.on_change(client_id, None, version, now_ms());
                                }
                                return;
                            }
                        },
                    };
                    if count_sessions {
                        owners.on_change(client_id, session.as_ref(), version, now_ms());
                    }
                    // Only a connect fences; the record a leaving connection writes does not.
                    if let Some(session) = session
                        && session.disconnected_at_ms.is_none()
                    {
                        takeover.on_record(client_id, &session.connection, version);
                    }
                }
            }),
            cancel.clone(),
        )
        .await?;
        let retained_caps = RetainedCaps {
            messages: config.max_retained_per_principal,
            bytes: config.max_retained_bytes_per_principal,
        };
        let retained_owners = Arc::new(RetainedOwners::default());
        let retained_table = Table::start(
            log.clone(),
            PROTOCOL,
            &config.retained_topic,
            if retained_caps.any() {
                let owners = retained_owners.clone();
                Box::new(move |topic, record, version| owners.on_change(topic, record, version))
            } else {
                Box::new(|_, _, _| {})
            },
            cancel.clone(),
        )
        .await?;
        let exchange_table = Table::start(
            log.clone(),
            PROTOCOL,
            &config.qos2_topic,
            Box::new(|_, _, _| {}),
            cancel.clone(),
        )
        .await?;
        Ok(Arc::new(Self {
            sessions: SessionStore::new(
                log.clone(),
                config.sessions_topic.clone(),
                session_table,
                session_owners,
            ),
            retained: RetainedStore::new(
                log.clone(),
                config.retained_topic.clone(),
                retained_table,
                retained_caps,
                retained_owners,
            ),
            exchanges: ExchangeStore::new(log.clone(), config.qos2_topic.clone(), exchange_table),
            fanout: Fanout::new(log.clone(), Arc::new(MqttTopics), fanout::LAG_LIMIT, cancel),
            publish: Arc::new(Metered::new(log.clone(), Protocol::Mqtt)),
            log,
            routes,
            access,
            takeover,
            config,
        }))
    }
}
