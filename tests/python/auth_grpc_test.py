"""Who may call Courier's gRPC API, and what they may do: a grpcio client generated from proto/ at
test time, against a gateway in front of Kafka with a users file, JWTs and a policy.

Run by tests/auth_grpc.rs, which writes the gateway's files and mints the tokens (--credentials, a
JSON file). Every refusal is checked for its code and message, and what a refused call would have
written is checked in Kafka itself with a native consumer (confluent-kafka): nothing. Exits non-zero
on any failure.
"""

import argparse
import base64
import json
import os
import queue
import sys
import tempfile
import uuid

import grpc
from grpc_client_test import generate  # the stubs, generated from proto/ as that test does

DEADLINE = 30.0


def basic(user, password):
    return (("authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()),)


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def expect_code(code, call, *args, **kwargs):
    """Runs `call`; it must fail with `code`. Returns the error's details (the server's message)."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as error:
        assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
        return error.details()
    raise AssertionError(f"expected {code}, the call succeeded")


class Check:
    def __init__(self, pb, channel, credentials, bootstrap):
        self.pb = pb
        self.streams = pb["streams_pb2_grpc"].StreamsStub(channel)
        self.admin = pb["admin_pb2_grpc"].AdminStub(channel)
        self.channel = channel
        self.creds = credentials
        self.bootstrap = bootstrap
        self.user = basic(credentials["user"], credentials["password"])
        self.root = basic(credentials["admin_user"], credentials["admin_password"])
        self.token = bearer(credentials["tokens"]["valid"])
        run = uuid.uuid4().hex[:8]
        self.open_topic = f"open-{run}"
        self.secret_topic = f"secret-{run}"

    def record(self, value, headers=()):
        return self.pb["streams_pb2"].ProduceRecord(
            value=value.encode(), headers=[self.pb["records_pb2"].Header(key=k, value=v.encode()) for k, v in headers]
        )

    def produce(self, topic, values, metadata, headers=()):
        request = self.pb["streams_pb2"].ProduceRequest(topic=topic, records=[self.record(v, headers) for v in values])
        return self.streams.Produce(request, metadata=metadata, timeout=DEADLINE)

    def setup(self):
        for topic in (self.open_topic, self.secret_topic):
            self.admin.CreateTopic(self.pb["admin_pb2"].CreateTopicRequest(name=topic, partitions=1), metadata=self.root, timeout=DEADLINE)

    def accepted(self):
        self.produce(self.open_topic, ["by-basic"], self.user)
        self.produce(self.open_topic, ["by-bearer"], self.token)
        print("accepted: Basic and Bearer")

    def unauthenticated(self):
        tokens = self.creds["tokens"]
        cases = {
            "no credentials": (),
            "wrong password": basic(self.creds["user"], "not-the-password"),
            "unknown user": basic("mallory", "whatever"),
            "expired token": bearer(tokens["expired"]),
            "wrong audience": bearer(tokens["wrong_audience"]),
            "unknown key": bearer(tokens["unknown_key"]),
            "malformed header": (("authorization", "Digest abc"),),
        }
        for name, metadata in cases.items():
            details = expect_code(grpc.StatusCode.UNAUTHENTICATED, self.produce, self.open_topic, [f"refused-{name}"], metadata)
            assert details, f"{name}: no message"
            print(f"unauthenticated ({name}): {details}")
        # Health needs no credentials: probes carry none.
        health = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=lambda _: b"", response_deserializer=lambda b: b
        )
        health(None, timeout=DEADLINE)

    def produce_denied(self):
        details = expect_code(grpc.StatusCode.PERMISSION_DENIED, self.produce, self.secret_topic, ["denied-unary"], self.user)
        assert "produce" in details and self.secret_topic in details, details
        # ProduceStream answers the refused request in its error field, and the stream goes on.
        requests = [self.pb["streams_pb2"].ProduceRequest(topic=self.secret_topic, records=[self.record("denied-stream")], request_id=1),
                    self.pb["streams_pb2"].ProduceRequest(topic=self.open_topic, records=[self.record("by-stream")], request_id=2)]
        responses = {r.request_id: r for r in self.streams.ProduceStream(iter(requests), metadata=self.token, timeout=DEADLINE)}
        refused = responses[1]
        assert refused.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0] and not refused.acks, refused
        assert "produce" in refused.error.message and self.secret_topic in refused.error.message, refused
        assert responses[2].acks and not responses[2].HasField("error"), responses[2]
        print(f"produce denied: {details}")

    def subscribe_denied(self):
        start = self.pb["streams_pb2"].SubscribeStart(
            topics=[self.secret_topic], group=f"g-{uuid.uuid4().hex[:6]}", start=self.pb["records_pb2"].Position(earliest=True)
        )
        call = self.streams.Subscribe(iter([self.pb["streams_pb2"].SubscribeRequest(start=start)]), metadata=self.user, timeout=DEADLINE)
        delivered = []
        try:
            for response in call:
                delivered.append(response)
            raise AssertionError("the subscription to a denied topic was served")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (error.code(), error.details())
            assert "consume" in error.details() and self.secret_topic in error.details(), error.details()
        assert not any(r.WhichOneof("kind") == "records" for r in delivered), delivered
        print(f"subscribe denied: {call.details()}")

    def admin_and_reflection(self):
        details = expect_code(grpc.StatusCode.PERMISSION_DENIED, self.admin.ListTopics, self.pb["admin_pb2"].ListTopicsRequest(),
                              metadata=self.user, timeout=DEADLINE)
        assert "admin role" in details, details
        expect_code(grpc.StatusCode.PERMISSION_DENIED, self.admin.ListTopics, self.pb["admin_pb2"].ListTopicsRequest(),
                    metadata=self.token, timeout=DEADLINE)
        topics = self.admin.ListTopics(self.pb["admin_pb2"].ListTopicsRequest(), metadata=self.root, timeout=DEADLINE).topics
        assert self.open_topic in {t.name for t in topics}, topics
        topics = self.admin.ListTopics(self.pb["admin_pb2"].ListTopicsRequest(),
                                       metadata=bearer(self.creds["tokens"]["admin"]), timeout=DEADLINE).topics
        assert self.open_topic in {t.name for t in topics}, topics

        from grpc_reflection.v1alpha import reflection_pb2

        for version in ("v1", "v1alpha"):
            reflect = self.channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            ask = lambda: iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            try:
                list(reflect(ask(), metadata=self.user, timeout=DEADLINE))
                raise AssertionError(f"reflection {version} served a non-admin")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (version, error.code(), error.details())
                assert "admin role" in error.details(), error.details()
            answers = list(reflect(ask(), metadata=self.root, timeout=DEADLINE))
            services = {s.name for a in answers for s in a.list_services_response.service}
            assert "courier.v1.Streams" in services, services
        print(f"admin and reflection need the admin role: {details}")

    def internal_state(self):
        details = expect_code(grpc.StatusCode.PERMISSION_DENIED, self.produce, "mqtt.sessions", ["forged-session"], self.user)
        assert "mqtt.sessions" in details, details
        fetch = self.pb["streams_pb2"].FetchRequest(topic="mqtt.sessions", partition=0, offset=0)
        expect_code(grpc.StatusCode.PERMISSION_DENIED, self.streams.Fetch, fetch, metadata=self.user, timeout=DEADLINE)
        start = self.pb["streams_pb2"].SubscribeStart(topics=["mqtt.sessions"], start=self.pb["records_pb2"].Position(earliest=True))
        call = self.streams.Subscribe(iter([self.pb["streams_pb2"].SubscribeRequest(start=start)]), metadata=self.user, timeout=DEADLINE)
        expect_code(grpc.StatusCode.PERMISSION_DENIED, list, call)

        group = f"mqtt.session.device-1.{self.open_topic}"
        commit = self.pb["streams_pb2"].CommitRequest(
            group=group, offsets=[self.pb["records_pb2"].PartitionOffset(topic=self.open_topic, partition=0, offset=1)]
        )
        details = expect_code(grpc.StatusCode.PERMISSION_DENIED, self.streams.Commit, commit, metadata=self.user, timeout=DEADLINE)
        assert group in details, details
        seek = self.pb["streams_pb2"].SeekRequest(group=group, topic=self.open_topic, position=self.pb["records_pb2"].Position(latest=True))
        expect_code(grpc.StatusCode.PERMISSION_DENIED, self.streams.Seek, seek, metadata=self.token, timeout=DEADLINE)

        details = expect_code(grpc.StatusCode.PERMISSION_DENIED, self.produce, self.open_topic, ["forged-header"], self.user,
                              headers=[("mqtt-topic", "devices/1/state")])
        assert "mqtt-topic" in details, details
        print(f"internal state refused: {details}")

    def kafka_holds_only_the_accepted(self):
        """A native consumer reads both topics: only what was accepted is there."""
        from confluent_kafka import Consumer

        # A marker the admin writes last: everything before it in the secret topic would be a leak.
        self.produce(self.secret_topic, ["marker"], self.root)
        expected = {self.open_topic: ["by-basic", "by-bearer", "by-stream"], self.secret_topic: ["marker"]}
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"native-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe(list(expected))
        seen = {topic: [] for topic in expected}
        try:
            while any(len(seen[t]) < len(v) for t, v in expected.items()):
                message = consumer.poll(DEADLINE)
                assert message is not None, f"the native consumer saw only {seen}"
                assert message.error() is None, message.error()
                seen[message.topic()].append(message.value().decode())
            # Anything after the expected records would be a refused one that was stored.
            extra = consumer.poll(2.0)
            assert extra is None, f"unexpected record {extra.value()!r} in {extra.topic()}"
        finally:
            consumer.close()
        assert seen == expected, seen
        print("kafka holds only the accepted records")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--proto", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--credentials", required=True)
    args = parser.parse_args()
    with open(args.credentials) as file:
        credentials = json.load(file)
    with tempfile.TemporaryDirectory() as out:
        pb = generate(args.proto, out)
        channel = grpc.insecure_channel(args.server)
        grpc.channel_ready_future(channel).result(timeout=DEADLINE)
        check = Check(pb, channel, credentials, args.bootstrap)
        check.setup()
        check.accepted()
        check.unauthenticated()
        check.produce_denied()
        check.subscribe_denied()
        check.admin_and_reflection()
        check.internal_state()
        check.kafka_holds_only_the_accepted()
        print("auth checks passed")


if __name__ == "__main__":
    main()
