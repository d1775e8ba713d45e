"""Courier's AMQP 1.0 endpoint driven by python-qpid-proton, the client AMQP applications use.

Run by tests/amqp.rs. Modes (the first argument):
- `core`: send (unsettled and pre-settled), every body kind and typed properties round trip; a group of
  two receivers sharing partitions (each message exactly once); accept, release, modify and reject
  (rejected messages land in `T.dlq` with the reason); credit and drain; bad input (garbage bytes, bad
  addresses, oversized messages) closes only what it concerns;
- `no-auto-create`: attaching to a missing topic is refused with amqp:not-found;
- `sasl`: PLAIN with the users file's credentials works; a wrong password and ANONYMOUS are refused;
- `core+interop` (in front of Kafka): the core checks, then confluent-kafka reads what AMQP sent, and AMQP receives what confluent-kafka produced;
- `failover`: a group receiver on gateway A accepts some messages, A is killed (SIGKILL) mid-stream, and
  the receiver reattaches on gateway B: every message not accepted arrives, none accepted arrives again.
Every wait is bounded; exits non-zero on any failure.
"""

import argparse
import os
import signal
import socket
import sys
import time
import uuid

from proton import Message, symbol
from proton.reactor import AtMostOnce, Filter
from proton import ConnectionException, Endpoint, Timeout
from proton.utils import BlockingConnection, LinkDetached, SendException

DEADLINE = 30.0


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def connect(address, **options):
    return BlockingConnection(address, timeout=DEADLINE, **options)


def sender_link(connection, address, **options):
    # Proton names a link after its address; two links to one address on one connection would share a
    # name, which AMQP forbids, so every link gets a name of its own.
    return connection.create_sender(address, name=unique("sender"), **options)


def receiver_link(connection, address, **options):
    return connection.create_receiver(address, name=unique("receiver"), **options)


def receive_all(receiver, count, accept=True):
    messages = []
    for _ in range(count):
        message = receiver.receive(timeout=DEADLINE)
        messages.append(message)
        if accept:
            receiver.accept()
    return messages


def expect_no_message(receiver, seconds=1.0):
    try:
        message = receiver.receive(timeout=seconds)
    except Timeout:
        return
    raise AssertionError(f"unexpected message {message.body!r}")


def group_filter(group):
    return Filter({symbol("courier:group"): group})


def start_filter(start):
    return Filter({symbol("courier:start"): start})


# --- core ------------------------------------------------------------------------------------------


def send_and_receive(address):
    topic = unique("amqp-basic")
    connection = connect(address)
    sender = sender_link(connection, topic)
    bodies = ["text", b"bytes", 42, [1, "two", 3.5], {"k": "v"}, None]
    for i, body in enumerate(bodies):
        message = Message(body=body, id=f"client-{i}", subject="reading", content_type="text/plain",
                          properties={"seq": i, "site": "north", "ok": True, "kind": symbol("k")},
                          annotations={symbol("x-opt-partition-key"): "device-7"})
        sender.send(message)
    # Pre-settled (at-most-once) sends on a second link.
    presettled = sender_link(connection, topic, options=AtMostOnce())
    for i in range(2):
        presettled.send(Message(body=f"presettled-{i}", annotations={symbol("x-opt-partition-key"): "device-7"}))
    receiver = receiver_link(connection, topic, options=start_filter("earliest"))
    received = receive_all(receiver, len(bodies) + 2)
    check([m.body for m in received] == bodies + ["presettled-0", "presettled-1"],
          f"bodies round trip: {[m.body for m in received]}")
    first = received[0]
    check(first.properties == {"seq": 0, "site": "north", "ok": True, "kind": symbol("k")},
          f"typed properties round trip: {first.properties}")
    check(first.subject == "reading" and first.content_type == "text/plain", "properties section")
    check(len(first.id) == 26, f"message-id is the courier-id (a ULID): {first.id}")
    check(first.annotations[symbol("x-opt-partition-key")] == "device-7", "key annotation")
    partitions = {m.annotations[symbol("x-opt-partition")] for m in received}
    check(len(partitions) == 1, "one key, one partition")
    # A target naming a partition writes there, whatever the key.
    fixed = sender_link(connection, f"{topic}/partitions/1")
    for i in range(3):
        fixed.send(Message(body=f"fixed-{i}", annotations={symbol("x-opt-partition-key"): f"any-{i}"}))
    fixed_received = [m for m in receive_all(receiver, 3)]
    check([m.body for m in fixed_received] == [f"fixed-{i}" for i in range(3)]
          and all(m.annotations[symbol("x-opt-partition")] == 1 for m in fixed_received),
          f"T/partitions/1 writes to partition 1: {[(m.body, m.annotations) for m in fixed_received]}")
    connection.close()
    print("send and receive: bodies, properties and keys round trip")


def many_without_loss(address, count=500):
    """Unsettled sends are accepted only once stored: every accepted message is read back once."""
    topic = unique("amqp-many")
    connection = connect(address)
    sender = sender_link(connection, topic)
    for i in range(count):
        sender.send(Message(body=f"m-{i}", properties={"i": i}))
    receiver = receiver_link(connection, f"{topic}/groups/{unique('g')}", credit=100)
    bodies = [m.body for m in receive_all(receiver, count)]
    check(sorted(bodies) == sorted(f"m-{i}" for i in range(count)), "all sent, each once")
    expect_no_message(receiver)
    connection.close()
    print(f"{count} messages sent unsettled, each received exactly once")


def group_of_two(address, count=60):
    topic = unique("amqp-shared")
    group = unique("g")
    connections = [connect(address), connect(address)]
    receivers = [receiver_link(c, topic, options=group_filter(group), credit=10) for c in connections]
    time.sleep(2)  # let the group settle on two members before anything is sent
    sender = sender_link(connections[0], topic)
    for i in range(count):
        sender.send(Message(body=f"s-{i}", annotations={symbol("x-opt-partition-key"): f"key-{i % 12}"}))
    seen = {0: [], 1: []}
    deadline = time.monotonic() + DEADLINE * 2
    while len(seen[0]) + len(seen[1]) < count and time.monotonic() < deadline:
        for index, receiver in enumerate(receivers):
            try:
                message = receiver.receive(timeout=0.2)
            except Timeout:
                continue
            seen[index].append(message.body)
            receiver.accept()
    everything = seen[0] + seen[1]
    check(sorted(everything) == sorted(f"s-{i}" for i in range(count)),
          f"each message once across the group: {len(everything)} of {count}")
    check(seen[0] and seen[1], f"both members received: {len(seen[0])} and {len(seen[1])}")
    for connection in connections:
        connection.close()
    print(f"a group of two shared {count} messages: {len(seen[0])} + {len(seen[1])}")


def settlement_outcomes(address):
    topic = unique("amqp-settle")
    connection = connect(address)
    sender = sender_link(connection, topic)
    for name in ["release-me", "modify-me", "reject-me", "accept-me"]:
        sender.send(Message(body=name, annotations={symbol("x-opt-partition-key"): "one"}))
    group = unique("g")
    receiver = receiver_link(connection, f"{topic}/groups/{group}", credit=1)

    # Prefetch may deliver later messages before an outcome is acted on, so act by body: the first
    # delivery of each is settled as its name says, and what comes again is accepted.
    deliveries = {}
    while sum(deliveries.values()) < 6:
        message = receiver.receive(timeout=DEADLINE)
        seen = deliveries.get(message.body, 0)
        deliveries[message.body] = seen + 1
        if seen:
            if message.body == "modify-me":
                check(message.delivery_count == 1, f"a modified delivery is counted: {message.delivery_count}")
            receiver.accept()
        elif message.body == "release-me":
            receiver.release(delivered=False)  # Released: comes again
        elif message.body == "modify-me":
            # Modified with delivery-failed: comes again, counted. (The blocking API's
            # release(delivered=True) sends modified without the flag, so set it on the delivery.)
            receiver.fetcher.unsettled[0].local.failed = True
            receiver.release(delivered=True)
        elif message.body == "reject-me":
            receiver.reject()  # Rejected: dead-lettered, not redelivered
        else:
            receiver.accept()
    check(deliveries == {"release-me": 2, "modify-me": 2, "reject-me": 1, "accept-me": 1},
          f"deliveries per outcome: {deliveries}")
    expect_no_message(receiver)

    dead = receiver_link(connection, f"{topic}.dlq", options=start_filter("earliest"))
    letter = dead.receive(timeout=DEADLINE)
    dead.accept()
    check(letter.body == "reject-me", f"dead letter body: {letter.body}")
    check(letter.properties.get("dlq-topic") == topic and letter.properties.get("dlq-offset") == "2",
          f"dead letter says where from: {letter.properties}")
    connection.close()

    # The group committed all four: a new member of it reads nothing.
    connection = connect(address)
    receiver = receiver_link(connection, f"{topic}/groups/{group}")
    expect_no_message(receiver, 2.0)
    connection.close()
    print("accept, release, modify and reject behave; the rejected one is in the dead-letter topic")


def credit_and_drain(address):
    topic = unique("amqp-credit")
    connection = connect(address)
    sender = sender_link(connection, topic)
    for i in range(10):
        sender.send(Message(body=f"c-{i}"))
    receiver = receiver_link(connection, topic, options=start_filter("earliest"), credit=0)
    link = receiver.link
    arrived = lambda: receiver.fetcher.has_message  # deliveries that reached the client
    link.flow(3)
    connection.wait(lambda: arrived() >= 3, timeout=DEADLINE, msg="three deliveries for three credits")
    time.sleep(1)
    check(arrived() == 3, f"no delivery beyond the credit: {arrived()} arrived")
    link.drain(5)
    connection.wait(lambda: link.credit == 0 and not link.draining(), timeout=DEADLINE, msg="drain answered")
    held = arrived()
    time.sleep(1)
    check(arrived() == held, "nothing sent after a drain until new credit")
    link.flow(10)
    connection.wait(lambda: arrived() >= 10, timeout=DEADLINE, msg="the rest arrives with new credit")
    bodies = [m.body for m in receive_all(receiver, 10)]
    check(sorted(bodies) == sorted(f"c-{i}" for i in range(10)), f"credit and drain lose nothing: {bodies}")
    expect_no_message(receiver)
    connection.close()
    print(f"credit bounds deliveries; drain answered ({held - 3} more delivered while draining)")


def expect_link_error(connection, create, condition, what):
    """The link is refused: attached and at once detached with `condition`."""
    try:
        link = create()
        connection.wait(lambda: link.link.state & Endpoint.REMOTE_CLOSED, timeout=DEADLINE, msg=what)
    except (LinkDetached, SendException, ConnectionException) as error:
        check(condition in str(error), f"{what}: expected {condition}, got {error}")
        return
    raise AssertionError(f"{what}: closed without an error")


def bad_input(address, max_message_size):
    host, port = address.rsplit(":", 1)
    # Garbage instead of a protocol header, and a valid header followed by garbage frames: those
    # sockets are closed, nothing else.
    for garbage in [b"GET / HTTP/1.1\r\n\r\n" + os.urandom(64), b"AMQP\x03\x01\x00\x00" + os.urandom(256)]:
        raw = socket.create_connection((host, int(port)), timeout=DEADLINE)
        raw.sendall(garbage)
        try:
            while raw.recv(4096):
                pass
        except ConnectionResetError:
            pass
        raw.close()

    connection = connect(address)
    topic = unique("amqp-bad")
    good = sender_link(connection, topic)
    expect_link_error(connection, lambda: sender_link(connection, "a/b/c"), "amqp:invalid-field", "bad target")
    expect_link_error(connection, lambda: sender_link(connection, f"{topic}/partitions/99"), "amqp:invalid-field",
                      "missing partition")
    expect_link_error(connection, lambda: receiver_link(connection, f"{topic}", options=start_filter("yesterday")),
                      "amqp:invalid-field", "bad start filter")
    big = sender_link(connection, topic)
    try:
        big.send(Message(body=b"x" * (max_message_size + 1024)))
        raise AssertionError("an oversized message was accepted")
    except (LinkDetached, SendException, ConnectionException) as error:
        check("message-size-exceeded" in str(error) or "max-message-size" in str(error).lower()
              or "exceed" in str(error).lower(), f"oversized: {error}")
    good.send(Message(body="still fine"))
    receiver = receiver_link(connection, topic, options=start_filter("earliest"))
    check(receive_all(receiver, 1)[0].body == "still fine", "the good link carried on")
    connection.close()
    print("garbage, bad addresses and oversized messages close only what they concern")


# --- other modes ------------------------------------------------------------------------------------


def no_auto_create(address):
    connection = connect(address)
    missing = unique("amqp-missing")
    expect_link_error(connection, lambda: sender_link(connection, missing), "amqp:not-found", "sender to a missing topic")
    expect_link_error(connection, lambda: receiver_link(connection, missing), "amqp:not-found",
                      "receiver from a missing topic")
    connection.close()
    print("missing topics refused with amqp:not-found")


def sasl(address, user, password):
    connection = connect(address, user=user, password=password, allowed_mechs="PLAIN",
                         allow_insecure_mechs=True)
    topic = unique("amqp-sasl")
    sender_link(connection, topic).send(Message(body="authenticated"))
    receiver = receiver_link(connection, topic, options=start_filter("earliest"))
    check(receive_all(receiver, 1)[0].body == "authenticated", "PLAIN user can send and receive")
    connection.close()
    for options in [dict(user=user, password="wrong", allowed_mechs="PLAIN", allow_insecure_mechs=True),
                    dict(allowed_mechs="ANONYMOUS")]:
        try:
            sender_link(connect(address, **options), topic)
        except ConnectionException:
            continue
        raise AssertionError(f"connection allowed with {options}")
    print("SASL PLAIN checked against the users file; bad passwords and anonymous refused")


def interop(address, bootstrap):
    from confluent_kafka import Consumer, Producer

    topic = unique("amqp-interop")
    connection = connect(address)
    sender = sender_link(connection, topic)
    for i in range(10):
        sender.send(Message(body=f"from-amqp-{i}", properties={"seq": str(i)},
                            annotations={symbol("x-opt-partition-key"): f"k{i}"}))
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("native"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    got = {}
    deadline = time.monotonic() + DEADLINE * 2
    while len(got) < 10 and time.monotonic() < deadline:
        record = consumer.poll(1.0)
        if record is None or record.error():
            continue
        headers = {k: v for k, v in (record.headers() or [])}
        got[record.value().decode()] = (record.key().decode(), headers)
    consumer.close()
    check(len(got) == 10, f"Kafka read all 10: {sorted(got)}")
    key, headers = got["from-amqp-3"]
    check(key == "k3" and headers.get("seq") == b"3" and headers.get("amqp-body") == b"string"
          and "courier-id" in headers, f"key and headers reach Kafka: {key} {headers}")

    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        producer.produce(topic, key=f"n{i}", value=f"from-kafka-{i}".encode(), headers=[("origin", b"native")])
    check(producer.flush(DEADLINE) == 0, "Kafka producer flushed")
    receiver = receiver_link(connection, topic, options=start_filter("earliest"), credit=50)
    received = receive_all(receiver, 20)
    # Native records have no amqp-body header: they arrive as a data section (memoryview in Proton).
    native = [m for m in received if isinstance(m.body, (bytes, memoryview))
              and bytes(m.body).startswith(b"from-kafka-")]
    check(len(native) == 10, f"AMQP received the 10 Kafka records: {[m.body for m in received]}")
    check(all(m.properties.get("origin") == "native" for m in native), "Kafka headers as properties")
    connection.close()
    print("AMQP and native Kafka clients read each other's messages")


def failover(first, second, first_pid, count=300, accepted_first=100):
    topic = unique("amqp-failover")
    group = unique("g")
    connection = connect(first)
    sender = sender_link(connection, topic)
    for i in range(count):
        sender.send(Message(body=f"f-{i}", annotations={symbol("x-opt-partition-key"): f"k{i % 9}"}))
    receiver = receiver_link(connection, f"{topic}/groups/{group}", credit=20)
    accepted = [m.body for m in receive_all(receiver, accepted_first)]
    # Keep the connection's I/O going (a plain sleep would hold back the last dispositions) past the
    # group's commit interval, so the accepted prefix is committed.
    end = time.monotonic() + 3
    while time.monotonic() < end:
        try:
            connection.wait(lambda: False, timeout=0.2)
        except Timeout:
            pass
    unsettled = [m.body for m in receive_all(receiver, 20, accept=False)]
    os.kill(first_pid, signal.SIGKILL)
    try:
        connection.close()
    except Exception:
        pass

    connection = connect(second)
    receiver = receiver_link(connection, f"{topic}/groups/{group}", credit=50)
    rest = []
    deadline = time.monotonic() + DEADLINE * 3
    while len(set(accepted) | set(rest)) < count and time.monotonic() < deadline:
        try:
            rest.append(receiver.receive(timeout=1.0).body)
            receiver.accept()
        except Timeout:
            continue
    expect_no_message(receiver, 2.0)
    connection.close()
    everything = set(accepted) | set(rest)
    check(len(everything) == count, f"every message arrived: {len(everything)} of {count}")
    check(set(unsettled) <= set(rest), "the unsettled ones came again")
    again = set(accepted) & set(rest)
    check(not again, f"accepted messages delivered again: {sorted(again)}")
    check(len(rest) == len(set(rest)), "no duplicates on the second gateway")
    print(f"receiver moved replicas: {len(accepted)} accepted before, {len(rest)} after, none twice")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["core", "no-auto-create", "sasl", "core+interop", "failover"])
    parser.add_argument("--address", required=True)
    parser.add_argument("--second")
    parser.add_argument("--first-pid", type=int)
    parser.add_argument("--bootstrap")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--max-message-size", type=int, default=65536)
    args = parser.parse_args()
    if args.mode in ("core", "core+interop"):
        send_and_receive(args.address)
        many_without_loss(args.address)
        group_of_two(args.address)
        settlement_outcomes(args.address)
        credit_and_drain(args.address)
        bad_input(args.address, args.max_message_size)
    if args.mode == "core+interop":
        interop(args.address, args.bootstrap)
    elif args.mode == "no-auto-create":
        no_auto_create(args.address)
    elif args.mode == "sasl":
        sasl(args.address, args.user, args.password)
    elif args.mode == "failover":
        failover(args.address, args.second, args.first_pid)
    print("all checks passed")


if __name__ == "__main__":
    sys.exit(main())
