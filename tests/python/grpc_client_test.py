"""A Python client of Courier, generated from proto/ at test time with grpc_tools.protoc.

Run by tests/python.rs against a live gateway. It proves the .proto files are a complete contract for
another language: produce through ProduceStream, read in a consumer group whose two members share the
partitions, acknowledge, lose a member mid-stream, reconnect, and check nothing acknowledged is lost or
delivered twice. Exits non-zero on any failure.
"""

import argparse
import importlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid

DEADLINE = 30.0


def generate(proto_dir, out_dir):
    files = [os.path.join(proto_dir, "courier", "v1", name) for name in ("records.proto", "streams.proto", "admin.proto")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *files],
        check=True,
    )
    sys.path.insert(0, out_dir)
    return {name: importlib.import_module(f"courier.v1.{name}") for name in ("records_pb2", "streams_pb2", "streams_pb2_grpc", "admin_pb2", "admin_pb2_grpc")}


def connect(server):
    """A ready channel to the gateway (fails after DEADLINE)."""
    import grpc

    channel = grpc.insecure_channel(server)
    grpc.channel_ready_future(channel).result(timeout=DEADLINE)
    return channel


def stubs(pb, channel):
    """The Streams and Admin stubs on a channel."""
    return pb["streams_pb2_grpc"].StreamsStub(channel), pb["admin_pb2_grpc"].AdminStub(channel)


class Member:
    """One Subscribe stream: records arrive on a queue; acks go out through a request queue."""

    def __init__(self, pb, stub, topic, group):
        self.pb = pb
        self.requests = queue.Queue()
        self.records = queue.Queue()
        start = pb["streams_pb2"].SubscribeStart(
            topics=[topic], group=group, max_in_flight=1000, start=pb["records_pb2"].Position(earliest=True)
        )
        self.requests.put(pb["streams_pb2"].SubscribeRequest(start=start))
        self.call = stub.Subscribe(iter(self.requests.get, None))
        self.assigned = set()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        try:
            for response in self.call:
                kind = response.WhichOneof("kind")
                if kind == "records":
                    for record in response.records.records:
                        self.records.put(record)
                elif kind == "assigned":
                    self.assigned |= {(p.topic, p.partition) for p in response.assigned.partitions}
                elif kind == "revoked":
                    self.assigned -= {(p.topic, p.partition) for p in response.revoked.partitions}
        except Exception:  # the call was cancelled or the server ended it
            pass

    def take(self, wait):
        try:
            return self.records.get(timeout=wait)
        except queue.Empty:
            return None

    def ack(self, records):
        offsets = [self.pb["records_pb2"].PartitionOffset(topic=r.topic, partition=r.partition, offset=r.offset) for r in records]
        self.requests.put(self.pb["streams_pb2"].SubscribeRequest(ack=self.pb["streams_pb2"].Ack(records=offsets)))

    def close(self):
        """Graceful: half-close after the queued acks; the server commits them and ends the call."""
        self.requests.put(None)
        self.reader.join(timeout=DEADLINE)
        assert not self.reader.is_alive(), "the server did not end the call after the client half-closed"

    def vanish(self):
        """Abrupt: cancel the call, as a crashed client or a cut connection would."""
        self.call.cancel()


def wait_for(condition, what):
    deadline = time.time() + DEADLINE
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--proto", required=True)
    args = parser.parse_args()

    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with tempfile.TemporaryDirectory() as out_dir:
        pb = generate(args.proto, out_dir)
        channel = connect(args.server)
        streams, admin = stubs(pb, channel)

        # Server reflection lists the public services.
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        services = {s.name for s in answer.list_services_response.service}
        assert {"courier.v1.Streams", "courier.v1.Admin", "grpc.health.v1.Health"} <= services, services

        topic = f"py-{uuid.uuid4().hex[:12]}"
        group = f"py-group-{uuid.uuid4().hex[:8]}"
        admin.CreateTopic(pb["admin_pb2"].CreateTopicRequest(name=topic, partitions=4))

        # Bad input: a clear status code, not a hang.
        try:
            streams.Produce(pb["streams_pb2"].ProduceRequest(topic="bad topic", records=[pb["streams_pb2"].ProduceRecord(value=b"x")]))
            raise AssertionError("a bad topic name was accepted")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
            assert "bad topic" in error.details(), error.details()

        first = Member(pb, streams, topic, group)
        second = Member(pb, streams, topic, group)
        wait_for(lambda: len(first.assigned) == 2 and len(second.assigned) == 2, "both members to hold two partitions")

        # Pipelined produce: 30 requests of 10 keyed records on one stream.
        def produce_requests():
            for request_id in range(30):
                records = [pb["streams_pb2"].ProduceRecord(key=f"device-{(request_id * 10 + i) % 13}".encode(), value=f"reading-{request_id * 10 + i}".encode(),
                                                           headers=[pb["records_pb2"].Header(key="unit", value=b"celsius")]) for i in range(10)]
                yield pb["streams_pb2"].ProduceRequest(topic=topic, records=records, request_id=request_id)

        acks = {}
        for response in streams.ProduceStream(produce_requests(), timeout=DEADLINE):
            assert not response.HasField("error"), response.error
            acks[response.request_id] = list(response.acks)
        assert len(acks) == 30 and sum(len(a) for a in acks.values()) == 300
        assert all(ack.courier_id for batch in acks.values() for ack in batch)
        expected = {f"reading-{i}" for i in range(300)}

        # The first member acknowledges some records and then disappears without acking the rest.
        first_acked, first_unacked = set(), set()
        taken = []
        while len(taken) < 20:
            record = first.take(DEADLINE)
            assert record is not None, "the first member received nothing"
            taken.append(record)
        first.ack(taken[:10])
        first_acked |= {r.value.decode() for r in taken[:10]}
        first_unacked |= {r.value.decode() for r in taken[10:]}
        time.sleep(0.5)  # let the acks reach the gateway before the member vanishes
        first.vanish()

        second_seen = {}
        deadline = time.time() + DEADLINE
        while first_acked | set(second_seen) != expected:
            assert time.time() < deadline, f"second member stalled at {len(second_seen)}"
            record = second.take(1.0)
            if record is None:
                continue
            assert record.headers[0].key == "unit" and record.headers[0].value == b"celsius"
            second.ack([record])
            value = record.value.decode()
            second_seen[value] = second_seen.get(value, 0) + 1
        assert all(count == 1 for count in second_seen.values()), "a record came twice to the survivor"
        assert not (first_acked & set(second_seen)), "acknowledged records were delivered again"
        assert first_unacked <= set(second_seen), "unacknowledged records were redelivered"

        # Reconnect: once the survivor's acks are committed and it leaves, a new member has nothing left.
        second.close()
        def lag_is_zero():
            described = admin.DescribeGroup(pb["admin_pb2"].DescribeGroupRequest(group=group))
            return len(described.partitions) == 4 and all(p.lag == 0 for p in described.partitions) and not described.members
        wait_for(lag_is_zero, "the group to commit everything")
        again = Member(pb, streams, topic, group)
        wait_for(lambda: len(again.assigned) == 4, "the new member to hold every partition")
        assert again.take(1.0) is None, "a committed record was delivered again"
        again.close()
        print(f"python grpcio client: 300 produced, {len(first_acked)} + {len(second_seen)} acknowledged, 0 lost, 0 acknowledged twice")


if __name__ == "__main__":
    main()
