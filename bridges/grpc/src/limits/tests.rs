use super::{CallKinds, kinds::CallKind};
use crate::proto::FILE_DESCRIPTOR_SET;

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
