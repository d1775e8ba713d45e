"""Interop between Courier's gRPC clients and a native Kafka client (confluent-kafka, librdkafka).

Run by tests/kafka_interop.rs against a gateway in front of a tansu broker:
- what a gRPC client produces, the native Kafka consumer reads with key, headers and value intact, at the
  partition and offset the gateway acknowledged, plus the gateway's `courier-id` and `courier-origin`
  headers;
- what the native Kafka producer writes, a gRPC subscriber receives with key, headers and value intact
  (and no courier id, since no gateway wrote it);
- a key lands in the same partition through the gateway as through a Kafka client using Kafka's
  murmur2 partitioner (the Java client's default).
Exits non-zero on any failure.
"""

import argparse
import tempfile
import uuid

from confluent_kafka import Consumer, Producer

from grpc_client_test import DEADLINE, Member, connect, generate, stubs

COUNT = 60


def grpc_to_kafka(pb, streams, admin, bootstrap, region):
    topic = f"interop-in-{uuid.uuid4().hex[:10]}"
    admin.CreateTopic(pb["admin_pb2"].CreateTopicRequest(name=topic, partitions=3))
    sent = []
    for i in range(COUNT):
        sent.append(
            pb["streams_pb2"].ProduceRecord(
                key=f"sensor-{i % 7}".encode(),
                value=b"\x00\xff" + f"payload-{i}".encode(),
                headers=[pb["records_pb2"].Header(key="trace", value=f"t{i}".encode()),
                         pb["records_pb2"].Header(key="dup", value=b"a"),
                         pb["records_pb2"].Header(key="dup", value=b"b")],
            )
        )
    acks = streams.Produce(pb["streams_pb2"].ProduceRequest(topic=topic, records=sent), timeout=DEADLINE).acks
    assert len(acks) == COUNT
    by_position = {(a.partition, a.offset): (a.courier_id, record) for a, record in zip(acks, sent)}

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"native-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    seen = {}
    try:
        while len(seen) < COUNT:
            message = consumer.poll(DEADLINE)
            assert message is not None, f"the native consumer got {len(seen)} of {COUNT}"
            assert message.error() is None, message.error()
            position = (message.partition(), message.offset())
            assert position in by_position, f"{position} was not acknowledged by the gateway"
            courier_id, record = by_position[position]
            assert message.key() == record.key and message.value() == record.value
            headers = message.headers()
            application = [(k, v) for k, v in headers if not k.startswith("courier-")]
            assert application == [(h.key, h.value) for h in record.headers], headers
            assert dict(headers)["courier-id"] == courier_id.encode(), headers
            assert dict(headers)["courier-origin"] == region.encode(), headers
            seen[position] = True
    finally:
        consumer.close()
    return len(seen)


def kafka_to_grpc(pb, streams, bootstrap):
    topic = f"interop-out-{uuid.uuid4().hex[:10]}"
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "partitioner": "murmur2_random", "allow.auto.create.topics": False})
    # The topic comes from the gateway (auto-create on subscribe), like a team that provisions through it.
    member = Member(pb, streams, topic, f"grpc-{uuid.uuid4().hex[:8]}")

    delivered = {}

    def on_delivery(error, message):
        assert error is None, error
        delivered[message.value()] = (message.partition(), message.offset())

    for i in range(COUNT):
        producer.produce(topic, key=f"meter-{i % 5}".encode(), value=f"native-{i}".encode(),
                         headers=[("source", b"kafka"), ("n", str(i).encode())], on_delivery=on_delivery)
    assert producer.flush(DEADLINE) == 0, "the native producer could not deliver"
    assert len(delivered) == COUNT

    received = {}
    while len(received) < COUNT:
        record = member.take(DEADLINE)
        assert record is not None, f"the gRPC subscriber got {len(received)} of {COUNT}"
        member.ack([record])
        value = record.value
        assert value not in received, f"{value} delivered twice"
        assert delivered[value] == (record.partition, record.offset)
        i = int(value.decode().split("-")[1])
        assert record.key == f"meter-{i % 5}".encode()
        assert [(h.key, h.value) for h in record.headers] == [("source", b"kafka"), ("n", str(i).encode())]
        assert record.courier_id == "" and record.origin == "", "records of native clients carry no courier id"
        received[value] = record
    member.close()

    # Same key, same partition: through the gateway and through a murmur2 Kafka client.
    native_partitions = {}
    for value, (partition, _) in delivered.items():
        native_partitions[f"meter-{int(value.decode().split('-')[1]) % 5}"] = partition
    records = [pb["streams_pb2"].ProduceRecord(key=key.encode(), value=b"via-gateway") for key in native_partitions]
    acks = streams.Produce(pb["streams_pb2"].ProduceRequest(topic=topic, records=records), timeout=DEADLINE).acks
    for key, ack in zip(native_partitions, acks):
        assert ack.partition == native_partitions[key], f"key {key}: gateway chose {ack.partition}, Kafka {native_partitions[key]}"
    return len(received)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--proto", required=True)
    parser.add_argument("--region", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out_dir:
        pb = generate(args.proto, out_dir)
        streams, admin = stubs(pb, connect(args.server))
        into_kafka = grpc_to_kafka(pb, streams, admin, args.bootstrap, args.region)
        out_of_kafka = kafka_to_grpc(pb, streams, args.bootstrap)
        print(f"interop: {into_kafka} gRPC->Kafka and {out_of_kafka} Kafka->gRPC records intact")


if __name__ == "__main__":
    main()
