//! The `courier.v1.Streams` service: the data plane. Unary calls are here; the two long-lived streams
//! have their own modules ([`crate::produce_stream`], [`crate::subscribe`]).
//!
//! Each call sees the log as its caller: wrapped in its own [`Authorized`], which decides every
//! request by the principal's policy and keeps it off the gateway's internal state, and behind
//! it the principal's quotas ([`Quoted`], where `[limits.quotas]` sets any). For the two
//! streams that wrapper lives as long as the stream, which ends when the gateway drains or the
//! caller's token expires ([`crate::stream_end`]).

use std::sync::Arc;

use courier_gateway::{
    auth::Access,
    config::GroupsConfig,
    log::{
        Log, TopicPartition,
        layers::{Authorized, Quoted, Scope},
    },
    metrics::{self, Protocol},
    telemetry::{TRACEPARENT, Who, context_of_call},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    authentication::principal_of,
    convert::{self, acks_to_wire, partition_from_wire, record_from_wire},
    fetch::FetchCaps,
    produce_stream,
    proto::v1::{self as pb, streams_server::Streams},
    stream_end::StreamEnds,
    subscribe, to_status,
};

/// The Streams service over a Log.
#[derive(Debug, Clone)]
pub struct StreamsService {
    /// The log as every client sees it (metered); each call wraps it for its caller.
    log: Arc<dyn Log>,
    groups: GroupsConfig,
    /// What one Fetch may read and return.
    fetch_caps: FetchCaps,
    /// Cancelled when the gateway drains: streams finish what they hold and end with UNAVAILABLE.
    drain: CancellationToken,
    /// Who may call (the authorizer decides each call's requests), and every principal's quotas:
    /// a call draws from its caller's.
    access: Access,
}

impl StreamsService {
    /// A service over `log`, each call's requests decided by `access`'s authorizer and held to
    /// its caller's quotas, Fetch within `fetch_caps`; `drain` ends its streams gracefully.
    pub(crate) fn new(
        log: Arc<dyn Log>,
        access: Access,
        groups: GroupsConfig,
        fetch_caps: FetchCaps,
        drain: CancellationToken,
    ) -> Self {
        Self {
            log,
            access,
            groups,
            fetch_caps,
            drain,
        }
    }

    /// The log as the caller of `request` may use it.
    fn log_for<T>(&self, request: &Request<T>) -> Result<Arc<dyn Log>, Status> {
        let principal = principal_of(request)?.clone();
        let address = request
            .extensions()
            .get::<crate::Peer>()
            .and_then(|peer| peer.address);
        let quota = self.access.quota(&principal, None, address, Protocol::Grpc);
        let log = self.access.traced(self.log.clone(), || {
            let metadata = request.metadata();
            let text = |key: &str| metadata.get(key).and_then(|value| value.to_str().ok());
            Who::new(Protocol::Grpc, None)
                .in_call(context_of_call(text(TRACEPARENT), text("tracestate")))
        });
        let log = match quota {
            Some(quota) => Arc::new(Quoted::new(log, quota)),
            None => log,
        };
        Ok(Arc::new(
            Authorized::new(
                log,
                self.access.authorizer.clone(),
                principal,
                None,
                "grpc",
                Scope::KafkaNames,
            )
            .calling_from(address),
        ))
    }

    /// What ends a stream the caller of `request` opens.
    fn ends_for<T>(&self, request: &Request<T>) -> Result<StreamEnds, Status> {
        Ok(StreamEnds::new(self.drain.clone(), principal_of(request)?))
    }
}

#[tonic::async_trait]
impl Streams for StreamsService {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let log = self.log_for(&request)?;
        let request = request.into_inner();
        let records: Vec<_> = request.records.into_iter().map(record_from_wire).collect();
        let appended = log
            .append(&request.topic, records)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ProduceResponse {
            request_id: request.request_id,
            acks: acks_to_wire(appended),
            error: None,
        }))
    }

    type ProduceStreamStream = produce_stream::ResponseStream;

    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let (peer, log) = (peer_of(&request), self.log_for(&request)?);
        let ends = self.ends_for(&request)?;
        Ok(Response::new(produce_stream::start(
            peer,
            log,
            request.into_inner(),
            ends,
        )))
    }

    type SubscribeStream = subscribe::ResponseStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = peer_of(&request);
        let log = self.log_for(&request)?;
        let ends = self.ends_for(&request)?;
        subscribe::start(log, request.into_inner(), peer, &self.groups, ends).await
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchResponse>, Status> {
        let log = self.log_for(&request)?;
        let request = request.into_inner();
        let limits = self
            .fetch_caps
            .limits(request.max_records, request.max_bytes);
        let partition = partition_from_wire(request.topic, request.partition);
        let fetched = log
            .fetch(&partition, request.offset, limits)
            .await
            .map_err(to_status)?;
        let records = self.fetch_caps.fit(fetched.records);
        metrics::delivered(
            Protocol::Grpc,
            records.len(),
            records
                .iter()
                .map(|r| r.value.as_ref().map_or(0, |v| v.len()))
                .sum(),
        );
        Ok(Response::new(pb::FetchResponse {
            records,
            low_watermark: fetched.low_watermark,
            high_watermark: fetched.high_watermark,
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let log = self.log_for(&request)?;
        let request = request.into_inner();
        require_group(&request.group)?;
        let offsets: Vec<(TopicPartition, i64)> = request
            .offsets
            .into_iter()
            .map(|o| (partition_from_wire(o.topic, o.partition), o.offset))
            .collect();
        log.commit(&request.group, &offsets)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::CommitResponse {}))
    }

    async fn seek(
        &self,
        request: Request<pb::SeekRequest>,
    ) -> Result<Response<pb::SeekResponse>, Status> {
        let log = self.log_for(&request)?;
        let request = request.into_inner();
        require_group(&request.group)?;
        let position = convert::required_position(request.position, "position")?;
        let partitions: Vec<i32> = match request.partition {
            Some(partition) => vec![partition],
            None => {
                let topic = log
                    .describe_topic(&request.topic)
                    .await
                    .map_err(to_status)?;
                topic.partitions.iter().map(|p| p.partition).collect()
            }
        };
        let mut offsets = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let partition = TopicPartition::new(request.topic.as_str(), partition);
            let offset = log.resolve(&partition, position).await.map_err(to_status)?;
            offsets.push((partition, offset));
        }
        log.commit(&request.group, &offsets)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::SeekResponse {
            offsets: offsets
                .into_iter()
                .map(|(tp, offset)| pb::PartitionOffset {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    offset,
                })
                .collect(),
        }))
    }
}

/// The client's address, for spans and group descriptions.
pub(crate) fn peer_of<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<crate::Peer>()
        .and_then(|peer| peer.address)
        .map_or_else(|| "unknown".to_owned(), |addr| addr.to_string())
}

fn require_group(group: &str) -> Result<(), Status> {
    if group.is_empty() {
        return Err(Status::invalid_argument("group is required"));
    }
    Ok(())
}
