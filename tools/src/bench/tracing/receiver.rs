//! An OTLP/gRPC trace receiver in the bench's process: the collector the traced gateway exports to,
//! which counts the spans it is sent, and the messages they stand for (a root publish span's
//! `messaging.batch.message_count`, else one), and keeps nothing else. Built from the official protos
//! (`opentelemetry-proto`'s generated `TraceService`), so the exporter talks to it as to any
//! collector.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value,
    trace::v1::Span,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// The receiver, serving on a loopback port until [`Receiver::stop`].
pub(super) struct Receiver {
    address: SocketAddr,
    counts: Arc<Counts>,
    stop: CancellationToken,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Receiver {
    /// Binds 127.0.0.1 on a free port and serves there.
    pub(super) async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OTLP receiver")?;
        let address = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        let service = TraceServiceServer::new(Counting(counts.clone()));
        // No Nagle delay on the replies, as collectors answer (TCP_NODELAY): with it a reply could
        // wait up to 40 ms for the exporter's delayed ACK, and the exporter, one export at a time,
        // fell behind (the last of 500,000 MQTT messages' spans came 10 to 31 s after the last
        // ack; now within 0.1 s).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
        );
        Ok(Self {
            address,
            counts,
            stop,
            serving,
        })
    }

    /// What `[telemetry.tracing] endpoint` names to export here.
    pub(super) fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Spans received so far.
    pub(super) fn spans(&self) -> u64 {
        self.counts.spans.load(Ordering::Relaxed)
    }

    /// Messages the spans received so far stand for.
    pub(super) fn messages(&self) -> u64 {
        self.counts.messages.load(Ordering::Relaxed)
    }

    /// Stops serving.
    pub(super) async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.serving
            .await
            .context("the OTLP receiver panicked")?
            .context("the OTLP receiver failed")
    }
}

#[derive(Default)]
struct Counts {
    spans: AtomicU64,
    messages: AtomicU64,
}

/// The trace service: adds up the spans of every export.
struct Counting(Arc<Counts>);

/// What `messaging.batch.message_count` says a span stands for, else one message.
fn messages_of(span: &Span) -> u64 {
    span.attributes
        .iter()
        .find(|attribute| attribute.key == "messaging.batch.message_count")
        .and_then(
            |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                any_value::Value::IntValue(count) => u64::try_from(*count).ok(),
                _ => None,
            },
        )
        .unwrap_or(1)
}

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| &scope.spans);
        let (count, messages) = spans.fold((0, 0), |(count, messages), span| {
            (count + 1, messages + messages_of(span))
        });
        self.0.spans.fetch_add(count, Ordering::Relaxed);
        self.0.messages.fetch_add(messages, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::trace_service_client::TraceServiceClient,
        common::v1::{AnyValue, KeyValue},
        trace::v1::{ResourceSpans, ScopeSpans},
    };

    use super::*;

    fn scope(spans: usize) -> ScopeSpans {
        ScopeSpans {
            spans: vec![Span::default(); spans],
            ..Default::default()
        }
    }

    fn batch_of(messages: i64) -> Span {
        Span {
            attributes: vec![KeyValue {
                key: "messaging.batch.message_count".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(messages)),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_spans_of_every_resource_and_scope_are_counted() {
        let receiver = Receiver::start().await.unwrap();
        let mut client = TraceServiceClient::connect(receiver.endpoint())
            .await
            .unwrap();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(2), scope(3)],
                    ..Default::default()
                },
                ResourceSpans {
                    scope_spans: vec![
                        scope(1),
                        ScopeSpans {
                            spans: vec![batch_of(64)],
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                },
            ],
        };
        client.export(request.clone()).await.unwrap();
        assert_eq!((receiver.spans(), receiver.messages()), (7, 70));
        client.export(request).await.unwrap();
        assert_eq!((receiver.spans(), receiver.messages()), (14, 140));
        drop(client);
        receiver.stop().await.unwrap();
    }
}
