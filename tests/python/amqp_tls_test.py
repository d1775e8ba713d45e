"""Courier's AMQP endpoint over TLS (AMQPS) with python-qpid-proton, and AMQP's own TLS upgrade with
Python's ssl.

Run by tests/amqp.rs. Modes (the first argument):
- `round-trip`: over `amqps://` (the server certificate checked against `--ca` and the host name; with
  `--cert` and `--key` a client certificate too), send 3 messages to a topic and receive them back
  through a group receiver; without `--ca`, the same over plain `amqp://`;
- `refused`: the TLS connection must fail (a gateway that requires a client certificate, none given);
- `upgrade`: send AMQP's TLS protocol header in plain text, expect it back, handshake TLS on the same
  socket, then send the SASL header and expect the SASL header and mechanisms back.
Every wait is bounded; exits non-zero on any failure.
"""

import argparse
import socket
import ssl
import sys
import uuid

from proton import ConnectionException, Message, SSLDomain, SSLException
from proton.utils import BlockingConnection

DEADLINE = 30.0
TLS_HEADER = b"AMQP\x02\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def ssl_domain(ca, cert=None, key=None):
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    domain.set_trusted_ca_db(ca)
    domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    if cert:
        domain.set_credentials(cert, key, None)
    return domain


def connect(args):
    if args.ca:
        domain = ssl_domain(args.ca, args.cert, args.key)
        return BlockingConnection(f"amqps://{args.address}", ssl_domain=domain, timeout=DEADLINE)
    return BlockingConnection(f"amqp://{args.address}", timeout=DEADLINE)


def round_trip(args):
    topic = unique("amqp-tls")
    connection = connect(args)
    sender = connection.create_sender(topic, name=unique("sender"))
    bodies = [f"secret-{i}" for i in range(3)]
    for body in bodies:
        sender.send(Message(body=body))
    receiver = connection.create_receiver(f"{topic}/groups/{unique('g')}", name=unique("receiver"),
                                          credit=10)
    received = []
    for _ in bodies:
        received.append(receiver.receive(timeout=DEADLINE).body)
        receiver.accept()
    # Each once; in any order, since the topic has three partitions and the messages no key.
    check(sorted(received) == sorted(bodies), f"messages round trip: {received}")
    connection.close()
    print(f"round trip over {'TLS' if args.ca else 'plain text'}: 3 messages sent and received")


def refused(args):
    try:
        connection = connect(args)
        # A TLS 1.3 server refuses a missing certificate after the client's part of the handshake:
        # the refusal arrives with the first thing the client waits for.
        connection.create_sender(unique("amqp-tls-refused"), name=unique("sender"))
    except (ConnectionException, SSLException) as error:
        print(f"refused as expected: {error!r}")
        return
    raise AssertionError("the connection was not refused")


def upgrade(args):
    host, port = args.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=DEADLINE) as raw:
        raw.sendall(TLS_HEADER)
        check(recv_exactly(raw, 8) == TLS_HEADER, "the gateway answers the TLS header with its own")
        context = ssl.create_default_context(cafile=args.ca)
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(SASL_HEADER)
            check(recv_exactly(tls, 8) == SASL_HEADER, "SASL header back over TLS")
            mechanisms = tls.recv(1024)
            check(b"ANONYMOUS" in mechanisms, f"SASL mechanisms over TLS: {mechanisms!r}")
    print("AMQP TLS upgrade: header answered, handshake done, SASL offered over TLS")


def recv_exactly(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    return data


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["round-trip", "refused", "upgrade"])
    parser.add_argument("--address", required=True, help="host:port")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    {"round-trip": round_trip, "refused": refused, "upgrade": upgrade}[args.mode](args)
    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"FAILED: {error}")
        sys.exit(1)
