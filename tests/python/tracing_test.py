"""One message's trace across protocols, as an OTLP receiver (otlp_receiver.py) records the gateway's spans.

Run by tests/tracing.rs against a gateway in front of a tansu broker, its spans exported to the receiver
whose JSON lines are --spans:
- `--tracing on`: an MQTT 5 client (paho) publishes with a `traceparent` user property; a gRPC group
  member (grpcio, stubs generated from proto/), an AMQP group receiver (python-qpid-proton), an MQTT 5
  subscriber and a native Kafka consumer (confluent-kafka) read it. The receiver must hold, in the
  publisher's trace, one publish span (child of the publisher's span) and a deliver span per gateway
  protocol (each a child of the publish span), with the messaging attributes; each client must see the
  `traceparent` of the span it continues (Kafka readers the publish span's, gateway clients their deliver
  span's). A record a native Kafka producer wrote with a `traceparent` is continued the same way. A
  message published without one is delivered without one (its publish is a root span).
- `--tracing off`: the same clients; every `traceparent` arrives exactly as sent, none is added, and
  the receiver gets nothing.
Exits non-zero on any failure.
"""

import argparse
import json
import os
import queue
import secrets
import sys
import tempfile
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from confluent_kafka import Consumer, Producer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from proton import Timeout, symbol
from proton.reactor import Filter
from proton.utils import BlockingConnection

sys.path.insert(0, os.path.dirname(__file__))
from grpc_client_test import Member, connect, generate, stubs  # noqa: E402

DEADLINE = 30.0
TOPIC = "mqtt.messages"


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def traceparent():
    """A new sampled W3C trace context: (header, trace id, span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def parts(header):
    version, trace_id, span_id, flags = header.split("-")
    return trace_id, span_id


class MqttSubscriber:
    def __init__(self, port, filter_):
        self.messages = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_message = lambda client, userdata, message: self.messages.put(message)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(filter_, qos=1)
        check(subscribed.wait(DEADLINE), "no SUBACK")

    def take(self, payload):
        deadline = time.time() + DEADLINE
        while time.time() < deadline:
            try:
                message = self.messages.get(timeout=1)
            except queue.Empty:
                continue
            if message.payload == payload:
                return dict(getattr(message.properties, "UserProperty", []) or [])
        raise AssertionError(f"MQTT subscriber did not get {payload!r}")


def mqtt_publish(port, client_id, topic, payload, user_properties):
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    properties = Properties(PacketTypes.PUBLISH)
    if user_properties:
        properties.UserProperty = user_properties
    client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(DEADLINE)
    client.disconnect()
    client.loop_stop()


def grpc_take(member, payload):
    deadline = time.time() + DEADLINE
    while time.time() < deadline:
        record = member.take(1)
        if record is None:
            continue
        member.ack([record])
        if record.value == payload:
            return {header.key: header.value.decode() for header in record.headers}
    raise AssertionError(f"gRPC member did not get {payload!r}")


def amqp_take(receiver, payload):
    deadline = time.time() + DEADLINE
    while time.time() < deadline:
        message = receiver.receive(timeout=DEADLINE)
        receiver.accept()
        body = message.body if isinstance(message.body, bytes) else bytes(message.body or b"")
        if body == payload:
            # Proton's blocking API writes only inside a blocking call: wait once more, so the
            # disposition (the acknowledgement that ends the deliver span) goes out now.
            try:
                extra = receiver.receive(timeout=0.3)
            except Timeout:
                extra = None
            check(extra is None, f"AMQP receiver got an unexpected message {extra}")
            return dict(message.properties or {})
    raise AssertionError(f"AMQP receiver did not get {payload!r}")


def kafka_take(consumer, payload):
    deadline = time.time() + DEADLINE
    while time.time() < deadline:
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        if message.value() == payload:
            return {key: value.decode() for key, value in (message.headers() or [])}
    raise AssertionError(f"Kafka consumer did not get {payload!r}")


def spans_in(path):
    with open(path, encoding="utf-8") as spans:
        return [json.loads(line) for line in spans if line.strip()]


def wait_for_spans(path, wanted, what):
    deadline = time.time() + DEADLINE
    while time.time() < deadline:
        found = [span for span in spans_in(path) if wanted(span)]
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no span {what} reached the receiver; it has: {spans_in(path)}")


class Readers:
    """Every reader, started before anything is published."""

    def __init__(self, args, base):
        proto_out = tempfile.mkdtemp()
        self.pb = generate(args.proto, proto_out)
        streams, _ = stubs(self.pb, connect(args.grpc))
        self.member = Member(self.pb, streams, TOPIC, f"grpc-{uuid.uuid4().hex[:8]}")
        wait = time.time() + DEADLINE
        while not self.member.assigned and time.time() < wait:
            time.sleep(0.1)
        check(self.member.assigned, "the gRPC member was assigned nothing")
        self.amqp = BlockingConnection(args.amqp, timeout=DEADLINE)
        self.receiver = self.amqp.create_receiver(
            TOPIC, name=f"receiver-{uuid.uuid4().hex[:8]}",
            options=Filter({symbol("courier:group"): f"amqp-{uuid.uuid4().hex[:8]}",
                            symbol("courier:start"): "earliest"}))
        self.mqtt = MqttSubscriber(args.mqtt_port, f"{base}/#")
        self.kafka = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"native-{uuid.uuid4().hex[:8]}",
                               "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.kafka.subscribe([TOPIC])

    def every(self, payload):
        """What each reader saw of `payload`: its headers or properties, by reader."""
        return {
            "grpc": grpc_take(self.member, payload),
            "amqp": amqp_take(self.receiver, payload),
            "mqtt": self.mqtt.take(payload),
            "kafka": kafka_take(self.kafka, payload),
        }

    def close(self):
        self.member.close()
        self.amqp.close()
        self.mqtt.client.disconnect()
        self.mqtt.client.loop_stop()
        self.kafka.close()


def native_publish(bootstrap, key, payload, headers):
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(TOPIC, key=key.encode(), value=payload, headers=headers)
    check(producer.flush(DEADLINE) == 0, "the Kafka producer did not deliver")


def tracing_on(args):
    base = f"traced-{uuid.uuid4().hex[:8]}"
    readers = Readers(args, base)
    sent, trace_id, parent_span = traceparent()
    publisher = f"pub-{uuid.uuid4().hex[:8]}"
    mqtt_publish(args.mqtt_port, publisher, f"{base}/up", b"traced", [("traceparent", sent), ("note", "kept")])
    print(f"publisher's trace {trace_id}", flush=True)
    seen = readers.every(b"traced")

    # The publish span: a child of the publisher's span, in its trace, written into the Kafka record.
    [publish] = wait_for_spans(args.spans, lambda s: s["trace_id"] == trace_id and s["name"] == f"publish {TOPIC}",
                               "publish in the publisher's trace")
    check(publish["parent_span_id"] == parent_span, f"publish's parent is {publish['parent_span_id']}, not the publisher's span")
    check(publish["kind"] == 4, f"publish is not a PRODUCER span: {publish}")  # SPAN_KIND_PRODUCER
    attributes = publish["attributes"]
    for key, value in [("messaging.system", "kafka"), ("messaging.destination.name", TOPIC),
                       ("messaging.operation.type", "send"), ("messaging.client.id", publisher),
                       ("network.protocol.name", "mqtt")]:
        check(attributes.get(key) == value, f"publish {key} = {attributes.get(key)!r}, not {value!r}")
    check("messaging.kafka.offset" in attributes and "messaging.destination.partition.id" in attributes,
          f"publish has no partition or offset: {attributes}")
    check(parts(seen["kafka"]["traceparent"]) == (trace_id, publish["span_id"]),
          f"the Kafka record carries {seen['kafka']['traceparent']}, not the publish span's context")
    check(seen["mqtt"].get("note") == "kept", f"user properties not passed on: {seen['mqtt']}")

    # A deliver span per protocol, each a child of the publish span; each client continues from its own.
    for protocol in ("grpc", "amqp", "mqtt"):
        [deliver] = wait_for_spans(
            args.spans,
            lambda s: s["trace_id"] == trace_id and s["name"] == f"deliver {TOPIC}"
            and s["attributes"].get("network.protocol.name") == protocol,
            f"deliver over {protocol}")
        check(deliver["parent_span_id"] == publish["span_id"], f"{protocol} deliver's parent is not the publish span")
        check(deliver["kind"] == 5, f"{protocol} deliver is not a CONSUMER span")  # SPAN_KIND_CONSUMER
        check(deliver["attributes"].get("messaging.kafka.offset") == publish["attributes"]["messaging.kafka.offset"],
              f"{protocol} deliver names another offset")
        check(parts(seen[protocol]["traceparent"]) == (trace_id, deliver["span_id"]),
              f"{protocol} client got {seen[protocol]['traceparent']}, not its deliver span's context")
    print("publish and deliver spans in the publisher's trace, parents linked, contexts carried on")

    # A record a native Kafka producer wrote with a traceparent: its delivery continues that trace.
    native, native_trace, native_span = traceparent()
    native_publish(args.bootstrap, f"{base}/native", b"native", [("traceparent", native.encode())])
    seen_native = readers.every(b"native")
    for protocol in ("grpc", "amqp", "mqtt"):
        [deliver] = wait_for_spans(
            args.spans,
            lambda s: s["trace_id"] == native_trace and s["attributes"].get("network.protocol.name") == protocol,
            f"deliver over {protocol} of the native record")
        check(deliver["parent_span_id"] == native_span, f"{protocol} deliver of the native record has another parent")
        check(parts(seen_native[protocol]["traceparent"]) == (native_trace, deliver["span_id"]),
              f"{protocol} client got {seen_native[protocol]['traceparent']} for the native record")
    check(seen_native["kafka"]["traceparent"] == native, "the native record's header changed in Kafka")
    print("a native Kafka record's trace continued on delivery")

    # Without a trace context: a root publish span, and nothing added to what anybody reads.
    mqtt_publish(args.mqtt_port, publisher, f"{base}/plain", b"plain", [("note", "plain")])
    seen_plain = readers.every(b"plain")
    for reader, headers in seen_plain.items():
        check("traceparent" not in headers, f"{reader} got a traceparent for a message published without one: {headers}")
    wait_for_spans(args.spans, lambda s: s["name"] == f"publish {TOPIC}" and s["parent_span_id"] == ""
                   and s["attributes"].get("messaging.client.id") == publisher, "publish (root) of the plain message")
    readers.close()
    print("tracing on: one trace from the MQTT publisher to gRPC, AMQP, MQTT and Kafka readers")


def tracing_off(args):
    base = f"untraced-{uuid.uuid4().hex[:8]}"
    readers = Readers(args, base)
    sent, _, _ = traceparent()
    mqtt_publish(args.mqtt_port, "pub-off", f"{base}/up", b"sent-with", [("traceparent", sent)])
    for reader, headers in readers.every(b"sent-with").items():
        check(headers.get("traceparent") == sent, f"{reader} got {headers.get('traceparent')}, not the publisher's {sent}")
    mqtt_publish(args.mqtt_port, "pub-off", f"{base}/plain", b"sent-without", [])
    for reader, headers in readers.every(b"sent-without").items():
        check("traceparent" not in headers, f"{reader} got a traceparent with tracing off: {headers}")
    readers.close()
    # The exporter would have sent within its schedule (200 ms in the test) and on shutdown; the gateway
    # is stopped by the caller after this, and the receiver checked empty there too.
    time.sleep(1.0)
    check(not spans_in(args.spans), f"spans exported with tracing off: {spans_in(args.spans)}")
    print("tracing off: trace contexts passed on as sent, none added, nothing exported")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracing", choices=["on", "off"], required=True)
    parser.add_argument("--spans", required=True)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--proto", required=True)
    args = parser.parse_args()
    (tracing_on if args.tracing == "on" else tracing_off)(args)


if __name__ == "__main__":
    main()
