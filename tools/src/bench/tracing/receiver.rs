//! An OTLP/gRPC trace receiver in the bench's process: the collector the traced gateway exports to,
//! which counts the spans it is sent and keeps nothing else. Built from the official protos
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
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// The receiver, serving on a loopback port until [`Receiver::stop`].
pub(super) struct Receiver {
    address: SocketAddr,
    spans: Arc<AtomicU64>,
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
        let spans = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let service = TraceServiceServer::new(Counting(spans.clone()));
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
            spans,
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
        self.spans.load(Ordering::Relaxed)
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

/// The trace service: adds up the spans of every export.
struct Counting(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::trace_service_client::TraceServiceClient,
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };

    use super::*;

    fn scope(spans: usize) -> ScopeSpans {
        ScopeSpans {
            spans: vec![Span::default(); spans],
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
                    scope_spans: vec![scope(1)],
                    ..Default::default()
                },
            ],
        };
        client.export(request.clone()).await.unwrap();
        assert_eq!(receiver.spans(), 6);
        client.export(request).await.unwrap();
        assert_eq!(receiver.spans(), 12);
        drop(client);
        receiver.stop().await.unwrap();
    }
}
