//! `ProduceStream`: pipelined produce. Requests are submitted to the log in the order they arrive (so
//! per-partition order holds), up to [`MAX_PIPELINED`] await durability at once, and each is answered
//! as soon as the log acknowledged it. Past that bound the stream stops reading requests, and HTTP/2
//! flow control pushes back on the client: nothing buffers without bound.
//!
//! On drain the stream stops submitting, answers everything it submitted, answers later requests with
//! UNAVAILABLE "not written" until the client closes its side, and ends with UNAVAILABLE. When the
//! caller's token expires it stops submitting, answers everything it submitted, and ends with
//! UNAUTHENTICATED: what it did not answer was not written.

use std::{pin::Pin, sync::Arc};

use courier_gateway::{Error, log::Log};
use tokio::{sync::mpsc, task::JoinSet};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::{
    convert::{acks_to_wire, record_from_wire},
    proto::v1 as pb,
    status::error_to_wire,
    stream_end::{self, Cutoff, StreamEnds},
};

/// Requests of one stream awaiting durability at once.
pub const MAX_PIPELINED: usize = 256;

/// How long a draining stream keeps answering late requests with "not written" before it ends.
pub const DRAIN_LINGER: std::time::Duration = std::time::Duration::from_secs(3);

/// The response stream type.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ProduceResponse, Status>> + Send>>;

/// Starts serving one ProduceStream call.
pub(crate) fn start(
    peer: String,
    log: Arc<dyn Log>,
    requests: Streaming<pb::ProduceRequest>,
    ends: StreamEnds,
) -> ResponseStream {
    let (responses, stream) = mpsc::channel(MAX_PIPELINED);
    let span = tracing::info_span!("grpc.produce_stream", %peer);
    tokio::spawn(serve(log, requests, responses, ends).instrument(span));
    Box::pin(ReceiverStream::new(stream))
}

async fn serve(
    log: Arc<dyn Log>,
    mut requests: Streaming<pb::ProduceRequest>,
    responses: mpsc::Sender<Result<pb::ProduceResponse, Status>>,
    ends: StreamEnds,
) {
    let mut pending: JoinSet<pb::ProduceResponse> = JoinSet::new();
    let mut cutoff = None;
    // One wait for the whole stream, not a timer made and dropped per request.
    let ends = ends.reached();
    tokio::pin!(ends);
    loop {
        tokio::select! {
            biased;
            Some(done) = pending.join_next() => {
                if let Ok(response) = done && responses.send(Ok(response)).await.is_err() {
                    return; // the client is gone; its unanswered requests were still written
                }
            }
            reached = &mut ends => {
                cutoff = Some(reached);
                break;
            }
            request = requests.message(), if pending.len() < MAX_PIPELINED => match request {
                Ok(Some(request)) => {
                    let request_id = request.request_id;
                    let records: Vec<_> = request.records.into_iter().map(record_from_wire).collect();
                    match log.submit(&request.topic, records).await {
                        Ok(receipt) => {
                            pending.spawn(async move {
                                match receipt.await {
                                    Ok(appended) => pb::ProduceResponse { request_id, acks: acks_to_wire(appended), error: None },
                                    Err(error) => failed(request_id, error),
                                }
                            });
                        }
                        Err(error) => {
                            if responses.send(Ok(failed(request_id, error))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, "produce stream ended by the client");
                    break;
                }
            },
        }
    }
    // Answer everything already submitted before ending the stream.
    while let Some(done) = pending.join_next().await {
        if let Ok(response) = done {
            let _ = responses.send(Ok(response)).await;
        }
    }
    match cutoff {
        Some(Cutoff::Drain) => {
            refuse_until_client_stops(&mut requests, &responses).await;
            let _ = responses
                .send(Err(Status::unavailable(
                    "the gateway is shutting down; every request it accepted was answered; reconnect to continue",
                )))
                .await;
        }
        Some(Cutoff::Expired) => {
            let _ = responses.send(Err(stream_end::expired())).await;
        }
        None => {}
    }
}

/// After a drain, requests still arriving are answered "not written" one by one (so the client knows
/// exactly what to resend elsewhere) until the client closes its side or [`DRAIN_LINGER`] passes.
/// Ending the call while the client still sends would make the socket close with unread data, and the
/// resulting TCP reset can swallow the final status on its way to the client.
async fn refuse_until_client_stops(
    requests: &mut Streaming<pb::ProduceRequest>,
    responses: &mpsc::Sender<Result<pb::ProduceResponse, Status>>,
) {
    let linger = tokio::time::sleep(DRAIN_LINGER);
    tokio::pin!(linger);
    loop {
        tokio::select! {
            () = &mut linger => return,
            request = requests.message() => match request {
                Ok(Some(request)) => {
                    let refusal = failed(request.request_id, Error::ShuttingDown);
                    if responses.send(Ok(refusal)).await.is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => return,
            },
        }
    }
}

/// The answer to a request none of whose records were acknowledged.
fn failed(request_id: u64, error: Error) -> pb::ProduceResponse {
    pb::ProduceResponse {
        request_id,
        acks: Vec::new(),
        error: Some(error_to_wire(error)),
    }
}
