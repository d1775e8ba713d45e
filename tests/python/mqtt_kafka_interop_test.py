"""Interop between MQTT clients (paho-mqtt) and a native Kafka client (confluent-kafka) through Courier.

Run by tests/mqtt.rs against a gateway in front of a tansu broker:
- what MQTT clients publish, a Kafka consumer reads from `mqtt.messages`: the MQTT topic as key and as
  header `mqtt-topic`, the payload as value, MQTT 5 user properties as headers, plus `courier-id`;
- what a Kafka producer writes to `mqtt.messages` (key = an MQTT topic), MQTT 3.1.1 and 5 subscribers
  receive on matching filters, headers as MQTT 5 user properties.
Exits non-zero on any failure.
"""

import argparse
import threading
import uuid

import paho.mqtt.client as mqtt
from confluent_kafka import Consumer, Producer
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

DEADLINE = 30.0
COUNT = 20


def mqtt_client(args, protocol):
    received = []
    condition = threading.Condition()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    client.subacks = set()

    def on_message(client, userdata, message):
        with condition:
            received.append(message)
            condition.notify_all()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        with condition:
            client.subacks.add(mid)
            condition.notify_all()

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect(args.host, args.port)
    client.loop_start()
    return client, received, condition


def mqtt_to_kafka(args, base):
    client, _, _ = mqtt_client(args, mqtt.MQTTv5)
    for i in range(COUNT):
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = [("seq", str(i))]
        client.publish(f"{base}/up/{i % 4}", f"reading-{i}".encode(), qos=1,
                       properties=properties).wait_for_publish(DEADLINE)
    client.disconnect()
    client.loop_stop()

    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"native-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["mqtt.messages"])
    seen = {}
    try:
        while len(seen) < COUNT:
            message = consumer.poll(DEADLINE)
            assert message is not None, f"the Kafka consumer read {len(seen)} of {COUNT}"
            assert message.error() is None, message.error()
            key = message.key().decode()
            if not key.startswith(f"{base}/up/"):
                continue
            headers = message.headers()
            named = dict(headers)
            i = int(named["seq"])
            assert key == f"{base}/up/{i % 4}", key
            assert message.value() == f"reading-{i}".encode()
            assert named["mqtt-topic"] == key.encode(), headers
            assert named["mqtt-qos"] == b"1", headers
            assert len(named["courier-id"]) == 26, headers
            seen[i] = message.partition()
    finally:
        consumer.close()
    # One MQTT topic is one Kafka key, so its messages share a partition and keep their order.
    for topic in range(4):
        assert len({seen[i] for i in seen if i % 4 == topic}) == 1, seen
    print(f"mqtt -> kafka: {COUNT} messages read by the Kafka consumer, keyed by MQTT topic")


def kafka_to_mqtt(args, base):
    subscribers = []
    for protocol in (mqtt.MQTTv311, mqtt.MQTTv5):
        client, received, condition = mqtt_client(args, protocol)
        result, mid = client.subscribe(f"{base}/down/+/cmd", qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        with condition:
            assert condition.wait_for(lambda: mid in client.subacks, DEADLINE), "no SUBACK"
        subscribers.append((protocol, client, received, condition))

    producer = Producer({"bootstrap.servers": args.bootstrap, "batch.num.messages": 1})
    for i in range(COUNT):
        producer.produce("mqtt.messages", key=f"{base}/down/{i}/cmd".encode(), value=f"cmd-{i}".encode(),
                         headers=[("trace", f"t{i}".encode())])
    producer.flush(DEADLINE)
    producer.produce("mqtt.messages", key=f"{base}/down/x/other".encode(), value=b"not for them")
    producer.flush(DEADLINE)

    for protocol, client, received, condition in subscribers:
        with condition:
            assert condition.wait_for(lambda: len(received) >= COUNT, DEADLINE), \
                f"MQTT {protocol} subscriber got {len(received)} of {COUNT}"
        got = sorted((m.topic, m.payload) for m in received)
        assert got == sorted((f"{base}/down/{i}/cmd", f"cmd-{i}".encode()) for i in range(COUNT)), got
        if protocol == mqtt.MQTTv5:
            for message in received:
                i = message.topic.split("/")[-2]
                assert message.properties.UserProperty == [("trace", f"t{i}")], message.properties
        client.disconnect()
        client.loop_stop()
    print(f"kafka -> mqtt: {COUNT} records from the Kafka producer reached MQTT 3.1.1 and 5 subscribers")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    args = parser.parse_args()
    base = f"interop-{uuid.uuid4().hex[:8]}"
    kafka_to_mqtt(args, base)
    mqtt_to_kafka(args, base)
    print("interop: messages intact both ways")


if __name__ == "__main__":
    main()
