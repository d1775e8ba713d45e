//! `Subscribe`: a consumer-group member (or plain reader) over one bidi stream.
//!
//! The task below always listens to the client (acks, seeks) and takes the next event from the log only
//! when it has room to send it, so a client that is slow to read never stops its own acks from being
//! seen. The log stops delivering at `max_in_flight` unacknowledged records.
//!
//! The window is the client's `max_in_flight`, lowered to `groups.max_in_flight` (not refused), or
//! `groups.default_max_in_flight` when it sets none; the response's initial metadata says which
//! ([`MAX_IN_FLIGHT_HEADER`]).
//!
//! On drain (SIGTERM) the stream stops delivering, waits up to [`DRAIN_ACK_GRACE`] for the client to
//! ack what it holds, commits, and ends with UNAVAILABLE. Whatever stays unacknowledged is redelivered.
//! When the caller's token expires it does the same and ends with UNAUTHENTICATED.

use std::{pin::Pin, sync::Arc, time::Duration};

use courier_gateway::{
    config::GroupsConfig,
    log::{Log, Position, SubscribeOptions, Subscription, SubscriptionEvent, TopicPartition},
    metrics::{self, Protocol},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Response, Status, Streaming, metadata::MetadataValue};
use tracing::Instrument;

use crate::{
    convert::{self, assignment_to_wire, partition_from_wire, record_to_wire},
    proto::v1::{
        self as pb, subscribe_request::Kind as RequestKind,
        subscribe_response::Kind as ResponseKind,
    },
    stream_end::{self, Cutoff, StreamEnds},
    to_status,
};

/// How long a draining stream waits for the client to ack what it holds.
pub const DRAIN_ACK_GRACE: Duration = Duration::from_secs(2);

/// Events queued towards the client. Small: the log's window is the real bound.
const OUTBOUND_DEPTH: usize = 16;

/// Initial metadata of a Subscribe response: the `max_in_flight` in effect, which is lower than the
/// client asked for when it asked for more than `groups.max_in_flight`.
pub const MAX_IN_FLIGHT_HEADER: &str = "courier-max-in-flight";

/// The response stream type.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

/// Longest a Subscribe stream may take to send its `start` message.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the `start` message, subscribes, and starts serving the stream.
pub(crate) async fn start(
    log: Arc<dyn Log>,
    mut requests: Streaming<pb::SubscribeRequest>,
    peer: String,
    groups: &GroupsConfig,
    ends: StreamEnds,
) -> Result<Response<ResponseStream>, Status> {
    // Until it says what to read, a stream holds a streaming place for nothing: bounded.
    let first = tokio::time::timeout(START_TIMEOUT, requests.message())
        .await
        .map_err(|_| {
            metrics::limit_refused(Protocol::Grpc, "subscribe_start_timeout");
            Status::deadline_exceeded(format!(
                "no start message within {START_TIMEOUT:?} of opening Subscribe"
            ))
        })??
        .ok_or_else(|| Status::invalid_argument("the stream ended before its start message"))?;
    let Some(RequestKind::Start(start)) = first.kind else {
        return Err(Status::invalid_argument(
            "the first message of Subscribe must be `start`",
        ));
    };
    let max_in_flight = groups.window(start.max_in_flight as usize);
    let options = SubscribeOptions {
        topics: convert::selector_from_wire(start.topics, start.topic_pattern)?,
        group: (!start.group.is_empty()).then_some(start.group),
        start: convert::position_from_wire(start.start, Position::Latest),
        max_in_flight,
        client: peer,
        protocol: "grpc",
    };
    let span = tracing::info_span!("grpc.subscribe", peer = %options.client, group = options.group.as_deref().unwrap_or(""));
    let subscription = log.subscribe(options).await.map_err(to_status)?;
    span.in_scope(|| {
        if max_in_flight < start.max_in_flight as usize {
            tracing::debug!(
                asked = start.max_in_flight,
                max_in_flight,
                "max_in_flight lowered to groups.max_in_flight"
            );
        }
        tracing::debug!(max_in_flight, "subscription started");
    });

    let (responses, stream) = mpsc::channel(OUTBOUND_DEPTH);
    tokio::spawn(serve(subscription, requests, responses, ends).instrument(span));
    let mut response = Response::new(Box::pin(ReceiverStream::new(stream)) as ResponseStream);
    response
        .metadata_mut()
        .insert(MAX_IN_FLIGHT_HEADER, MetadataValue::from(max_in_flight));
    Ok(response)
}

/// Why a stream ended.
enum End {
    /// The client finished or went away.
    Client,
    /// The client broke the protocol; it is told why.
    Invalid(Status),
    /// The gateway is draining, or the caller's token expired.
    Cut(Cutoff),
    /// The log ended the subscription.
    Log,
}

async fn serve(
    mut subscription: Subscription,
    mut requests: Streaming<pb::SubscribeRequest>,
    responses: mpsc::Sender<Result<pb::SubscribeResponse, Status>>,
    ends: StreamEnds,
) {
    let mut next: Option<pb::SubscribeResponse> = None;
    // One wait for the whole stream, not a timer made and dropped per event.
    let ends = ends.reached();
    tokio::pin!(ends);
    let end = loop {
        tokio::select! {
            biased;
            cutoff = &mut ends => break End::Cut(cutoff),
            request = requests.message() => match request {
                Ok(Some(request)) => if let Err(status) = handle_request(&subscription, request).await {
                    break End::Invalid(status);
                },
                Ok(None) | Err(_) => break End::Client,
            },
            permit = responses.reserve(), if next.is_some() => match (permit, next.take()) {
                (Ok(permit), Some(response)) => permit.send(Ok(response)),
                _ => break End::Client,
            },
            event = subscription.next_event(), if next.is_none() => match event {
                Some(event) => next = Some(event_to_wire(event)),
                None => break End::Log,
            },
        }
    };

    if matches!(end, End::Cut(_)) {
        // Let the client ack what it holds, so it is not delivered twice after the restart.
        let grace = tokio::time::sleep(DRAIN_ACK_GRACE);
        tokio::pin!(grace);
        while subscription.control.outstanding() > 0 {
            tokio::select! {
                () = &mut grace => break,
                request = requests.message() => match request {
                    Ok(Some(request)) => { let _ = handle_request(&subscription, request).await; }
                    Ok(None) | Err(_) => break,
                },
            }
        }
    }
    if let Err(error) = subscription.close().await {
        tracing::warn!(%error, "closing a subscription failed; unacknowledged records will be redelivered");
    }
    let status = match end {
        End::Client => return,
        End::Invalid(status) => status,
        End::Cut(Cutoff::Drain) => Status::unavailable(
            "the gateway is shutting down; acknowledged records are committed; resubscribe to continue",
        ),
        End::Cut(Cutoff::Expired) => stream_end::expired(),
        End::Log => Status::unavailable("the log ended this subscription; resubscribe to continue"),
    };
    let _ = responses.send(Err(status)).await;
}

/// Applies one client message after `start`.
async fn handle_request(
    subscription: &Subscription,
    request: pb::SubscribeRequest,
) -> Result<(), Status> {
    match request.kind {
        Some(RequestKind::Ack(ack)) => {
            let acked = ack_ranges(subscription, ack.ranges)?;
            metrics::acked(
                Protocol::Grpc,
                acked + ack_records(subscription, ack.records),
            );
            Ok(())
        }
        Some(RequestKind::Seek(seek)) => {
            let position = convert::required_position(seek.position, "seek.position")?;
            subscription
                .control
                .seek(&partition_from_wire(seek.topic, seek.partition), position)
                .await
                .map_err(to_status)?;
            Ok(())
        }
        Some(RequestKind::Start(_)) => Err(Status::invalid_argument(
            "`start` may only be the first message of a Subscribe stream",
        )),
        None => Err(Status::invalid_argument(
            "empty SubscribeRequest: set ack or seek",
        )),
    }
}

/// Most offsets the ranges of one `Ack` may span together: above the largest window a subscriber
/// may ask for (100,000 records), so a batch's records fit in one ack. Some controls walk a range
/// offset by offset (a range across regions, the fan-out's members), so a client must not make the
/// gateway walk unbounded ranges.
const MOST_OFFSETS_AN_ACK: u64 = 1 << 17;

/// Acknowledges the delivered records in each of `ranges` (`SubscriptionControl::ack_range`);
/// returns how many were outstanding. All are checked before any is applied, so a refused message
/// acknowledges nothing.
fn ack_ranges(subscription: &Subscription, ranges: Vec<pb::OffsetRange>) -> Result<usize, Status> {
    let mut spanned: u64 = 0;
    for range in &ranges {
        if range.first < 0 || range.last < range.first {
            return Err(Status::invalid_argument(format!(
                "ack range {}..={} of partition {}: offsets start at 0 and `last` must be at \
                 least `first`",
                range.first, range.last, range.partition
            )));
        }
        spanned = spanned.saturating_add(range.last.abs_diff(range.first).saturating_add(1));
        if spanned > MOST_OFFSETS_AN_ACK {
            metrics::limit_refused(Protocol::Grpc, "ack_span");
            return Err(Status::invalid_argument(format!(
                "the ranges of one ack may span at most {MOST_OFFSETS_AN_ACK} offsets together; \
                 split them over several acks"
            )));
        }
    }
    let mut acked = 0;
    for range in ranges {
        let partition = partition_from_wire(range.topic, range.partition);
        acked += subscription
            .control
            .ack_range(&partition, range.first, range.last);
    }
    Ok(acked)
}

/// Acknowledges `records`, each run of one partition's records at once (a client acks a batch as
/// it received it: a run per partition the batch held); returns how many were outstanding.
fn ack_records(subscription: &Subscription, records: Vec<pb::PartitionOffset>) -> usize {
    let mut acked = 0;
    let mut run: Option<(TopicPartition, Vec<i64>)> = None;
    for record in records {
        match &mut run {
            Some((partition, offsets))
                if partition.partition == record.partition && *partition.topic == *record.topic =>
            {
                offsets.push(record.offset);
            }
            _ => {
                if let Some((partition, offsets)) = run.take() {
                    acked += subscription.control.ack_all(&partition, &offsets);
                }
                let partition = partition_from_wire(record.topic, record.partition);
                run = Some((partition, vec![record.offset]));
            }
        }
    }
    if let Some((partition, offsets)) = run {
        acked += subscription.control.ack_all(&partition, &offsets);
    }
    acked
}

fn event_to_wire(event: SubscriptionEvent) -> pb::SubscribeResponse {
    let kind = match event {
        SubscriptionEvent::Assigned(partitions) => {
            ResponseKind::Assigned(assignment_to_wire(partitions))
        }
        SubscriptionEvent::Revoked(partitions) => {
            ResponseKind::Revoked(assignment_to_wire(partitions))
        }
        SubscriptionEvent::Records(records) => {
            metrics::delivered_records(Protocol::Grpc, &records);
            ResponseKind::Records(pb::RecordBatch {
                records: records.into_iter().map(record_to_wire).collect(),
            })
        }
    };
    pb::SubscribeResponse { kind: Some(kind) }
}
