"""Who may connect to Courier's AMQP endpoint and what they may do, with python-qpid-proton.

Run by tests/auth_amqp.rs against one gateway in front of Kafka (tansu) with a users file, a policy
and JWTs configured. Modes (the first argument):
- `plain`: SASL PLAIN with `--user`/`--password` (the password may be a JWT) sends to and receives
  from `--topic`; with `--refused`, the same credentials must be refused instead;
- `anonymous-refused`: a client that offers only ANONYMOUS, and one that skips SASL, are refused;
- `external`: over `amqps://` with a client certificate (`--ca`, `--cert`, `--key`), SASL EXTERNAL
  sends to and receives from `--topic`;
- `policy`: as `--user`, a sender attach to `--denied` is refused with amqp:unauthorized-access, and
  a receiver attach to it too, with a group or without (nothing delivered, though it holds a
  record); confluent-kafka on `--bootstrap` then reads `--denied` and finds only the record
  `--admin` put there;
- `internal`: as `--user` (whom the policy allows every topic), attaching to `mqtt.sessions` is
  refused both ways with amqp:unauthorized-access.
Every wait is bounded; exits non-zero on any failure.
"""

import argparse
import sys
import time
import uuid

from proton import ConnectionException, Endpoint, Message, SSLDomain, SSLException
from proton.utils import BlockingConnection, LinkDetached, SendException

DEADLINE = 30.0
UNAUTHORIZED = "amqp:unauthorized-access"


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def plain_connection(address, user, password):
    return BlockingConnection(f"amqp://{address}", timeout=DEADLINE, user=user, password=password,
                              allowed_mechs="PLAIN", allow_insecure_mechs=True)


def round_trip(connection, topic, body):
    connection.create_sender(topic, name=unique("sender")).send(Message(body=body))
    receiver = connection.create_receiver(f"{topic}/groups/{unique('g')}", name=unique("receiver"),
                                          credit=10)
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        message = receiver.receive(timeout=DEADLINE)
        receiver.accept()
        if message.body == body:
            return
    raise AssertionError(f"{body!r} did not come back from {topic}")


def expect_refused_connection(connect, what):
    try:
        connection = connect()
        # The refusal may come with the first thing the client waits for.
        connection.create_sender(unique("refused"), name=unique("sender"))
    except (ConnectionException, SSLException) as error:
        print(f"{what}: refused ({error})")
        return str(error)
    raise AssertionError(f"{what}: the connection was let in")


def expect_link_error(connection, create, condition, naming, what):
    """The link is refused: attached and at once detached with `condition`, saying `naming`."""
    try:
        link = create()
        connection.wait(lambda: link.link.state & Endpoint.REMOTE_CLOSED, timeout=DEADLINE, msg=what)
    except (LinkDetached, SendException, ConnectionException) as error:
        text = str(error)
        check(condition in text, f"{what}: expected {condition}, got {text}")
        check(naming in text, f"{what}: expected the refusal to say {naming!r}, got {text}")
        print(f"{what}: refused ({text})")
        return
    raise AssertionError(f"{what}: closed without an error")


def plain(args):
    if args.refused:
        expect_refused_connection(lambda: plain_connection(args.address, args.user, args.password),
                                  f"PLAIN as {args.user!r} with bad credentials")
        return
    connection = plain_connection(args.address, args.user, args.password)
    round_trip(connection, args.topic, unique("plain"))
    connection.close()
    print(f"PLAIN as {args.user!r}: sent to and received from {args.topic}")


def anonymous_refused(args):
    expect_refused_connection(
        lambda: BlockingConnection(f"amqp://{args.address}", timeout=DEADLINE, allowed_mechs="ANONYMOUS"),
        "ANONYMOUS")
    # Without SASL at all (proton skips it when sasl_enabled is off): opened, then closed with the reason.
    error = expect_refused_connection(
        lambda: BlockingConnection(f"amqp://{args.address}", timeout=DEADLINE, sasl_enabled=False),
        "no SASL")
    check(UNAUTHORIZED in error, f"no SASL: expected {UNAUTHORIZED}, got {error}")


def external(args):
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    domain.set_trusted_ca_db(args.ca)
    domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    domain.set_credentials(args.cert, args.key, None)
    connection = BlockingConnection(f"amqps://{args.address}", ssl_domain=domain, timeout=DEADLINE,
                                    allowed_mechs="EXTERNAL")
    round_trip(connection, args.topic, unique("external"))
    connection.close()
    print(f"EXTERNAL with a client certificate: sent to and received from {args.topic}")


def policy(args):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    connection = plain_connection(args.address, args.user, args.password)
    expect_link_error(connection, lambda: connection.create_sender(args.denied, name=unique("sender")),
                      UNAUTHORIZED, f"{args.user} may not produce topic", "sender to a denied topic")
    # A sender that got as far as sending: the message must not be stored either.
    try:
        sender = connection.create_sender(args.denied, name=unique("sender"))
        sender.send(Message(body="must-not-be-stored"))
        raise AssertionError("a send to a denied topic was accepted")
    except (LinkDetached, SendException, ConnectionException) as error:
        check(UNAUTHORIZED in str(error), f"send to a denied topic: {error}")
    expect_link_error(connection,
                      lambda: connection.create_receiver(f"{args.denied}/groups/{unique('g')}",
                                                         name=unique("receiver"), credit=10),
                      UNAUTHORIZED, f"{args.user} may not consume topic", "receiver from a denied topic")
    # Without a group too: refused at the attach, so nothing is delivered though the topic holds a
    # record. Waited on until the detach arrives (bounded), never for a fixed while.
    expect_link_error(connection,
                      lambda: connection.create_receiver(args.denied, name=unique("receiver"), credit=10),
                      UNAUTHORIZED, f"{args.user} may not consume topic", "receiver from a denied topic, no group")
    connection.close()

    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": unique("native"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    # Everything the topic holds is below its partitions' end offsets now: the refusals came at the
    # attach, so no refused record can still be on its way. Read up to them, not for a while.
    partitions = consumer.list_topics(args.denied, timeout=DEADLINE).topics[args.denied].partitions
    ends = {}
    for partition in partitions:
        _, end = consumer.get_watermark_offsets(TopicPartition(args.denied, partition), timeout=DEADLINE)
        if end > 0:
            ends[partition] = end
    consumer.assign([TopicPartition(args.denied, partition, OFFSET_BEGINNING) for partition in ends])
    values = []
    deadline = time.monotonic() + DEADLINE
    while ends and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        values.append(message.value().decode())
        if message.offset() + 1 >= ends.get(message.partition(), 0):
            ends.pop(message.partition(), None)
    consumer.close()
    check(not ends, f"{args.denied}: not read to its end offsets within {DEADLINE}s: {ends}")
    check(values == ["from-admin"], f"{args.denied} holds only the admin's record: {values}")
    print(f"{args.user}: attaches to {args.denied} refused both ways; Kafka holds only the admin's record")


def internal(args):
    connection = plain_connection(args.address, args.user, args.password)
    expect_link_error(connection, lambda: connection.create_sender("mqtt.sessions", name=unique("sender")),
                      UNAUTHORIZED, "internal state", "sender to mqtt.sessions")
    expect_link_error(connection,
                      lambda: connection.create_receiver("mqtt.sessions", name=unique("receiver"), credit=10),
                      UNAUTHORIZED, "internal state", "receiver from mqtt.sessions")
    connection.close()
    print("mqtt.sessions refused both ways")


def admin_put(args):
    connection = plain_connection(args.address, args.user, args.password)
    connection.create_sender(args.topic, name=unique("sender")).send(Message(body="from-admin"))
    connection.close()
    print(f"{args.user} put one record in {args.topic}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["plain", "anonymous-refused", "external", "policy", "internal",
                                         "admin-put"])
    parser.add_argument("--address", required=True, help="host:port")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--topic")
    parser.add_argument("--denied")
    parser.add_argument("--bootstrap")
    parser.add_argument("--refused", action="store_true")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    {"plain": plain, "anonymous-refused": anonymous_refused, "external": external, "policy": policy,
     "internal": internal, "admin-put": admin_put}[args.mode](args)
    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"FAILED: {error}")
        sys.exit(1)
