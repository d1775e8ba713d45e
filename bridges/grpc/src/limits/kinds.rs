//! Which calls are unary and which stream, by their path, read from the descriptors of the services
//! served (so a streaming method added to the API is known as one without a list to keep).

use std::collections::HashSet;

use prost::Message as _;
use prost_types::FileDescriptorSet;

/// The path prefix of the health service. Probes are never limited: a probe refused while the
/// gateway is busy would have the orchestrator restart a replica that is merely loaded.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// How a call is limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// One request, one response (and calls to methods nobody serves, answered UNIMPLEMENTED).
    Unary,
    /// Client, server or bidirectional streaming.
    Streaming,
    /// Health checks: not limited.
    Probe,
}

/// The streaming methods of the services served, by path (`/package.Service/Method`).
#[derive(Debug, Clone, Default)]
pub(crate) struct CallKinds {
    streaming: HashSet<String>,
}

impl CallKinds {
    /// The kinds of every method in the encoded `FileDescriptorSet`s.
    pub(crate) fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut streaming = HashSet::new();
        for set in sets {
            for file in FileDescriptorSet::decode(*set)?.file {
                let package = file.package();
                for service in &file.service {
                    let service_path = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    for method in &service.method {
                        if method.client_streaming() || method.server_streaming() {
                            streaming.insert(format!("/{service_path}/{}", method.name()));
                        }
                    }
                }
            }
        }
        Ok(Self { streaming })
    }

    /// The kind of a call to `path`.
    pub(crate) fn of(&self, path: &str) -> CallKind {
        if path.starts_with(HEALTH) {
            CallKind::Probe
        } else if self.streaming.contains(path) {
            CallKind::Streaming
        } else {
            CallKind::Unary
        }
    }
}
