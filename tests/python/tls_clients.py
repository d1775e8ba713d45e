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
        c.disconnect()
        c.loop_stop()
    # The one disconnect our own disconnect() causes is not counted.
    print(f"disconnects={max(len(disconnects) - 1, 0)}")


def peer_names(host, port, ca):
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection((host, int(port)), timeout=DEADLINE) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            names = [value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"]
            print(" ".join(names))


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "paho":
        paho(*args)
    elif command == "publish-for":
        publish_for(*args)
    elif command == "peer-names":
        peer_names(*args)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
