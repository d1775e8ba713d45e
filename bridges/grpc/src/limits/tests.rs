use courier_gateway::{
    auth::{Principal, Source},
    limits::QuotaKey,
};
use tonic::codegen::http;

use super::{CallKinds, admission::caller_of, kinds::CallKind};
use crate::{connection::Peer, proto::FILE_DESCRIPTOR_SET};

/// A request from `address`, authenticated as `principal`.
fn request_of(principal: Principal, address: &str) -> http::Request<()> {
    let mut request = http::Request::new(());
    request.extensions_mut().insert(Peer {
        address: Some(address.parse().expect("an address")),
        certificate: None,
    });
    request.extensions_mut().insert(principal);
    request
}

/// A principal is one caller by name from whatever address it calls; anonymous clients are told
/// apart by their address alone (an IPv6 client by its /64).
#[test]
fn a_caller_is_its_principal_or_else_its_address() {
    let alice = || Principal::new("alice", Vec::new(), Source::Password);
    assert_eq!(
        caller_of(&request_of(alice(), "10.0.0.1:1000")),
        QuotaKey::Principal("alice".into())
    );
    assert_eq!(
        caller_of(&request_of(alice(), "10.0.0.2:2000")),
        caller_of(&request_of(alice(), "10.0.0.1:1000"))
    );
    assert_eq!(
        caller_of(&request_of(Principal::anonymous(), "10.0.0.1:1000")),
        QuotaKey::Address("10.0.0.1".parse().expect("an address"))
    );
    assert_ne!(
        caller_of(&request_of(Principal::anonymous(), "10.0.0.1:1000")),
        caller_of(&request_of(Principal::anonymous(), "10.0.0.2:1000"))
    );
    assert_eq!(
        caller_of(&request_of(Principal::anonymous(), "[2001:db8::1]:1000")),
        caller_of(&request_of(Principal::anonymous(), "[2001:db8::2]:1000"))
    );
}

/// Every streaming method the server serves is known as one, from the descriptors alone.
#[test]
fn streaming_calls_are_told_from_unary_ones_by_the_descriptors() {
    let kinds = CallKinds::from_descriptor_sets(&[
        FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ])
    .expect("the descriptors decode");
    for streaming in [
        "/courier.v1.Streams/ProduceStream",
        "/courier.v1.Streams/Subscribe",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        assert_eq!(kinds.of(streaming), CallKind::Streaming, "{streaming}");
    }
    for unary in [
        "/courier.v1.Streams/Produce",
        "/courier.v1.Streams/Fetch",
        "/courier.v1.Admin/CreateTopic",
        "/no.such.Service/Call",
    ] {
        assert_eq!(kinds.of(unary), CallKind::Unary, "{unary}");
    }
    for probe in [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
    ] {
        assert_eq!(kinds.of(probe), CallKind::Probe, "{probe}");
    }
}
