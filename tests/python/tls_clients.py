"""Real clients over TLS against a running gateway, driven by tests/tls.rs.

Commands (each exits non-zero with a message when what it checks does not hold):
  paho HOST PORT TRANSPORT CA [CERT KEY]
      paho-mqtt with tls_set over TRANSPORT (tcp or websockets): subscribes, publishes three QoS 1
      messages and receives them back.
  publish-for HOST PORT CA SECONDS TOPIC [CERT KEY]
      paho-mqtt over TLS publishing QoS 1 messages one after another for SECONDS on one connection;
      prints each acknowledged payload on its own line, then "disconnects=N".
  peer-names HOST PORT CA
      a fresh TLS connection (Python's ssl): prints the DNS names of the certificate served.
  https-get URL CA
      an HTTPS GET with Python's urllib: prints the status and the body.
  grpc TARGET CA PROTO [CERT KEY]
      grpcio with ssl_channel_credentials (stubs generated from PROTO): produces three records in
      one request and fetches them back.
"""

import ssl
import socket
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt

DEADLINE = 20.0


def client(transport, ca, cert=None, key=None):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"tls-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
        transport=transport,
    )
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    return c


def paho(host, port, transport, ca, cert=None, key=None):
    topic = f"tls/{transport}/{uuid.uuid4().hex[:8]}"
    received = []
    got_all = threading.Event()
    subscribed = threading.Event()

    def on_message(_c, _u, message):
        received.append(message.payload.decode())
        if len(received) == 3:
            got_all.set()

    c = client(transport, ca, cert, key)
    c.on_message = on_message
    c.on_subscribe = lambda *_: subscribed.set()
    c.connect(host, int(port))
    c.loop_start()
    try:
        c.subscribe(topic, qos=1)
        if not subscribed.wait(DEADLINE):
            raise SystemExit("no SUBACK over TLS")
        for i in range(3):
            info = c.publish(topic, f"m{i}", qos=1)
            info.wait_for_publish(DEADLINE)
            if not info.is_published():
                raise SystemExit(f"m{i} was not acknowledged")
        if not got_all.wait(DEADLINE):
            raise SystemExit(f"received {received} of 3")
        if sorted(received) != ["m0", "m1", "m2"]:
            raise SystemExit(f"received {received}")
        print(f"paho {transport}: 3 published and received over TLS")
    finally:
        c.disconnect()
        c.loop_stop()


def publish_for(host, port, ca, seconds, topic, cert=None, key=None):
    disconnects = []
    c = client("tcp", ca, cert, key)
    c.on_disconnect = lambda *args: disconnects.append(args)
    c.connect(host, int(port))
    c.loop_start()
    end = time.monotonic() + float(seconds)
    i = 0
    try:
        while time.monotonic() < end:
            payload = f"r{i}"
            info = c.publish(topic, payload, qos=1)
            info.wait_for_publish(DEADLINE)
            if not info.is_published():
                raise SystemExit(f"{payload} was not acknowledged")
            print(payload, flush=True)
            i += 1
            time.sleep(0.02)
    finally:
        # Counted before our own disconnect(), whose callback is not a lost connection.
        lost = len(disconnects)
        c.disconnect()
        c.loop_stop()
    print(f"disconnects={lost}")


def peer_names(host, port, ca):
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection((host, int(port)), timeout=DEADLINE) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            names = [value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"]
            print(" ".join(names))


def grpc_over_tls(target, ca, proto, cert=None, key=None):
    import tempfile

    import grpc

    from grpc_client_test import generate

    with tempfile.TemporaryDirectory() as out_dir:
        pb = generate(proto, out_dir)
        read = lambda path: open(path, "rb").read() if path else None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
        )
        with grpc.secure_channel(target, credentials) as channel:
            grpc.channel_ready_future(channel).result(timeout=DEADLINE)
            streams = pb["streams_pb2_grpc"].StreamsStub(channel)
            topic = f"grpc-tls-{uuid.uuid4().hex[:8]}"
            records = [pb["streams_pb2"].ProduceRecord(value=f"g{i}".encode(), partition=0) for i in range(3)]
            answer = streams.Produce(pb["streams_pb2"].ProduceRequest(topic=topic, records=records), timeout=DEADLINE)
            if len(answer.acks) != 3:
                raise SystemExit(f"acks: {answer}")
            fetched = streams.Fetch(pb["streams_pb2"].FetchRequest(topic=topic, partition=0, offset=0), timeout=DEADLINE)
            values = [record.value.decode() for record in fetched.records]
            if values != ["g0", "g1", "g2"]:
                raise SystemExit(f"fetched {values}")
            print(f"grpc over TLS: produced and fetched {values}")


def https_get(url, ca):
    import urllib.request

    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(url, context=context, timeout=DEADLINE) as response:
        print(response.status, response.read().decode().strip())


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "paho":
        paho(*args)
    elif command == "publish-for":
        publish_for(*args)
    elif command == "peer-names":
        peer_names(*args)
    elif command == "https-get":
        https_get(*args)
    elif command == "grpc":
        grpc_over_tls(*args)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
