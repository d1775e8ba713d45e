"""Who may connect to Courier's MQTT endpoint and what they may do, with real clients: paho-mqtt
(MQTT 5 and 3.1.1) against the real binary in front of a tansu broker, and a native Kafka consumer
(confluent-kafka) to show what a refused publish did not store.

Run by tests/auth_mqtt.rs, which writes the users file (alice, bob), the policy (devices/%c/# for
produce and consume, users/%u/# for consume) and the JWKS, and mints the tokens. Checks:
- CONNECT: the right password, a JWT as password: accepted; no credentials, a wrong password, an
  expired token: refused with MQTT 5's 0x87/0x86/0x86, 3.1.1's 5/4/4 (read from the raw CONNACK);
- publishes outside the policy: MQTT 5 PUBACK 0x87 (QoS 2: PUBREC 0x87, which paho does not
  report), 3.1.1 acknowledged; none is in Kafka;
- a publish with another protocol's header as a user property (`dlq-topic`): PUBACK 0x87, not in
  Kafka;
- SUBSCRIBE to `#`: MQTT 5 0x87, 3.1.1 0x80; nothing is delivered through it;
- a client id another user holds: refused (0x87, 5), and the holder stays connected;
- the policy rewritten while a client is connected: its next SUBSCRIBE follows the new rules;
- a user added to the users file: accepted without a restart;
- a client connected with a token that expires (in 20 s) is disconnected then with MQTT 5's 0xA0
  Maximum connect time (connected first, its disconnection awaited after the other checks).
Waits are on what shows (a message, a reload counted on /metrics), each with a deadline.
Exits non-zero on any failure.
"""

import argparse
import os
import re
import socket
import struct
import threading
import time
import urllib.request
import uuid

import paho.mqtt.client as mqtt
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

DEADLINE = 20.0
SUCCESS, NOT_AUTHORIZED, BAD_CREDENTIALS, UNSPECIFIED, PACKET_ID_NOT_FOUND = 0, 0x87, 0x86, 0x80, 0x92
MAXIMUM_CONNECT_TIME = 0xA0


class Client:
    """A paho client whose CONNACK, PUBACKs, SUBACKs, messages and disconnection are recorded."""

    def __init__(self, args, protocol, client_id, username=None, password=None):
        self.condition = threading.Condition()
        self.connack = None
        self.pubacks = {}
        self.subacks = {}
        self.messages = []
        self.disconnected = False
        self.disconnect_reason = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if username is not None or password is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        clean = {"clean_start": True} if protocol == mqtt.MQTTv5 else {}
        self.client.connect(args.host, args.port, keepalive=30, **clean)
        self.client.loop_start()
        self.wait(lambda: self.connack is not None, "CONNACK")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.condition:
            self.connack = reason_code.value
            self.condition.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.condition:
            self.pubacks[mid] = reason_code.value
            self.condition.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.condition:
            self.subacks[mid] = [code.value for code in reason_codes]
            self.condition.notify_all()

    def _on_message(self, client, userdata, message):
        with self.condition:
            self.messages.append((message.topic, message.payload))
            self.condition.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.condition:
            self.disconnected = True
            # The first: paho's loop reconnects on its own, and a later refusal must not hide it.
            if self.disconnect_reason is None:
                self.disconnect_reason = reason_code.value
            self.condition.notify_all()

    def wait(self, predicate, what):
        with self.condition:
            assert self.condition.wait_for(predicate, DEADLINE), f"no {what} within {DEADLINE} s"

    def publish(self, topic, payload, qos=1, user_properties=None):
        """Publishes and returns the PUBACK's reason code."""
        properties = None
        if user_properties:
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = user_properties
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        self.wait(lambda: info.mid in self.pubacks, f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def subscribe(self, topic_filter):
        """Subscribes and returns the SUBACK's reason code."""
        _, mid = self.client.subscribe(topic_filter, qos=1)
        self.wait(lambda: mid in self.subacks, f"SUBACK for {topic_filter}")
        return self.subacks[mid][0]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def connect_v5(args, client_id, username=None, password=None):
    client = Client(args, mqtt.MQTTv5, client_id, username, password)
    return client


def raw_connack_v311(args, client_id, username=None, password=None):
    """The return code of a raw MQTT 3.1.1 CONNACK (paho reports 3.1.1's codes as MQTT 5's)."""

    def string(text):
        data = text.encode()
        return struct.pack(">H", len(data)) + data

    flags = 0x02
    payload = string(client_id)
    if username is not None:
        flags |= 0x80
        payload += string(username)
    if password is not None:
        flags |= 0x40
        payload += string(password)
    body = string("MQTT") + bytes([4, flags]) + struct.pack(">H", 30) + payload
    assert len(body) < 128 * 128
    length = bytes([len(body)]) if len(body) < 128 else bytes([(len(body) & 0x7F) | 0x80, len(body) >> 7])
    with socket.create_connection((args.host, args.port), timeout=DEADLINE) as sock:
        sock.sendall(bytes([0x10]) + length + body)
        connack = b""
        while len(connack) < 4:
            chunk = sock.recv(4 - len(connack))
            assert chunk, "closed before CONNACK"
            connack += chunk
    assert connack[0] == 0x20, connack
    return connack[3]


def check_connect(args):
    for username, password, v5, v311, what in [
        ("alice", "ecila", SUCCESS, 0, "the right password"),
        ("ignored", args.token, SUCCESS, 0, "a JWT as password"),
        (None, None, NOT_AUTHORIZED, 5, "no credentials"),
        ("alice", "wrong", BAD_CREDENTIALS, 4, "a wrong password"),
        ("alice", args.expired_token, BAD_CREDENTIALS, 4, "an expired token"),
    ]:
        client = connect_v5(args, f"c-{uuid.uuid4().hex[:8]}", username, password)
        assert client.connack == v5, f"{what}: MQTT 5 CONNACK {client.connack:#x}, expected {v5:#x}"
        client.close()
        code = raw_connack_v311(args, f"c-{uuid.uuid4().hex[:8]}", username, password)
        assert code == v311, f"{what}: MQTT 3.1.1 CONNACK {code}, expected {v311}"
    print("CONNECT: passwords and tokens accepted; no, wrong and expired credentials refused")


def kafka_values(args, sentinel):
    """Every value in `mqtt.messages`, read to the end of each partition once `sentinel` (published
    last) is in: MQTT topics are keys, so the records asserted on may sit in other partitions than
    the sentinel's, and reading to the sentinel alone would miss them."""
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": f"check-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    metadata = consumer.list_topics("mqtt.messages", timeout=10)
    partitions = sorted(metadata.topics["mqtt.messages"].partitions)
    consumer.assign([TopicPartition("mqtt.messages", p, OFFSET_BEGINNING) for p in partitions])
    values = []
    try:
        deadline = time.monotonic() + 60
        ends = None
        while True:
            assert time.monotonic() < deadline, f"mqtt.messages was not read to its end; read {values}"
            if ends is None and sentinel in values:
                # Everything published before the sentinel was acknowledged before it.
                ends = {p: consumer.get_watermark_offsets(TopicPartition("mqtt.messages", p), timeout=10)
                        for p in partitions}
            if ends is not None:
                positions = {tp.partition: tp.offset for tp in consumer.position(
                    [TopicPartition("mqtt.messages", p) for p in partitions])}
                # An empty partition has no position to reach.
                if all(high <= low or positions[p] >= high for p, (low, high) in ends.items()):
                    return values
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            values.append(message.value())
    finally:
        consumer.close()


def check_policy(args):
    run = uuid.uuid4().hex[:8]
    v5 = connect_v5(args, f"dev-{run}-5", "alice", "ecila")
    v311 = Client(args, mqtt.MQTTv311, f"dev-{run}-3", "bob", "bob-pw")
    other = connect_v5(args, f"dev-{run}-o", "bob", "bob-pw")
    for client in (v5, v311, other):
        assert client.connack == SUCCESS, client.connack

    # SUBSCRIBE to everything: refused; to its own subtree: granted.
    assert v5.subscribe("#") == NOT_AUTHORIZED
    assert v311.subscribe("#") == UNSPECIFIED
    assert v5.subscribe(f"devices/dev-{run}-5/#") == 1
    assert v311.subscribe(f"devices/dev-{run}-3/#") == 1

    # Publishes outside the client's subtree: 0x87 (MQTT 5), acknowledged as usual (3.1.1).
    forbidden_v5 = f"forbidden-v5-{run}".encode()
    forbidden_v311 = f"forbidden-v311-{run}".encode()
    assert v5.publish(f"devices/dev-{run}-o/x", forbidden_v5) == NOT_AUTHORIZED
    # QoS 2: paho reads no reason code in PUBREC (the gateway's is 0x87, which ends the exchange)
    # and releases anyway; the gateway then answers PUBCOMP 0x92, packet identifier not found.
    assert v5.publish("elsewhere/x", forbidden_v5, qos=2) == PACKET_ID_NOT_FOUND
    assert v311.publish(f"devices/dev-{run}-o/x", forbidden_v311) == SUCCESS
    # Another protocol's header: an AMQP subscriber would take it as its front end's.
    forged = f"forged-{run}".encode()
    assert v5.publish(f"devices/dev-{run}-5/t", forged, user_properties=[("dlq-topic", "x")]) == NOT_AUTHORIZED
    # Allowed: another device's own topic (stored, and delivered back to it alone: `#` having
    # been refused to the others), then each client's own (delivered back to it). The gateway's
    # reader of `mqtt.messages` hands a record to every subscription it matches at once, so once
    # `other` has its message, a wrong delivery of it is already on its way to v5 and 3.1.1, ahead
    # of their own messages published after it.
    assert other.subscribe(f"devices/dev-{run}-o/#") == 1
    others = f"others-{run}".encode()
    assert other.publish(f"devices/dev-{run}-o/x", others) == SUCCESS
    other.wait(lambda: other.messages, "other's own message")
    mine_v5, mine_v311 = f"mine-v5-{run}".encode(), f"mine-v311-{run}".encode()
    assert v5.publish(f"devices/dev-{run}-5/t", mine_v5) == SUCCESS
    assert v311.publish(f"devices/dev-{run}-3/t", mine_v311) == SUCCESS
    v5.wait(lambda: v5.messages, "v5's own message")
    v311.wait(lambda: v311.messages, "3.1.1's own message")
    assert [payload for _, payload in v5.messages] == [mine_v5], v5.messages
    assert [payload for _, payload in v311.messages] == [mine_v311], v311.messages

    sentinel = f"sentinel-{run}".encode()
    assert other.publish(f"devices/dev-{run}-o/end", sentinel) == SUCCESS
    values = kafka_values(args, sentinel)
    for stored in (others, mine_v5, mine_v311):
        assert stored in values, f"{stored} missing from Kafka"
    for refused in (forbidden_v5, forbidden_v311, forged):
        assert refused not in values, f"{refused} reached Kafka"
    for client in (v5, v311, other):
        client.close()
    print("policy: publishes and subscriptions outside it refused; nothing stored or delivered")


def check_ownership(args):
    client_id = f"owned-{uuid.uuid4().hex[:8]}"
    owner = connect_v5(args, client_id, "alice", "ecila")
    assert owner.connack == SUCCESS
    intruder = connect_v5(args, client_id, "bob", "bob-pw")
    assert intruder.connack == NOT_AUTHORIZED, f"MQTT 5 intruder: {intruder.connack:#x}"
    intruder.close()
    assert raw_connack_v311(args, client_id, "bob", "bob-pw") == 5
    # The owner was not taken over: still connected, and its publishes are acknowledged.
    assert owner.publish(f"devices/{client_id}/still-here", b"yes") == SUCCESS
    assert not owner.disconnected, "the owner's connection was taken over"
    owner.close()
    print("ownership: another user's client id refused; the owner stays connected")


def reloads(args, file):
    """How many times the gateway has loaded `file` ("users", "policy"), from /metrics."""
    with urllib.request.urlopen(args.metrics_url, timeout=DEADLINE) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("courier_auth_reloads_total{") and f'file="{file}"' in line and 'outcome="loaded"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def await_reload(args, file, before):
    """Returns once the gateway has loaded `file` again since it had loaded it `before` times."""
    deadline = time.monotonic() + DEADLINE
    while reloads(args, file) <= before:
        assert time.monotonic() < deadline, f"{file} not reloaded within {DEADLINE} s"
        time.sleep(0.05)  # the interval of a poll with a deadline, not a wait for anything


def replace_file(path, text):
    """Writes beside and renames over, so the gateway never reads a half-written file."""
    with open(path + ".new", "w", encoding="utf-8") as new:
        new.write(text)
    os.replace(path + ".new", path)


def check_policy_reload(args):
    client = connect_v5(args, f"reload-{uuid.uuid4().hex[:8]}", "alice", "ecila")
    assert client.subscribe("alerts/#") == NOT_AUTHORIZED
    with open(args.policy_file, encoding="utf-8") as policy:
        text = policy.read()
    text += '\n[[rules]]\nwho = ["alice"]\nallow = ["consume"]\nmqtt = ["alerts/#"]\n'
    before = reloads(args, "policy")
    replace_file(args.policy_file, text)
    await_reload(args, "policy", before)
    assert client.subscribe("alerts/#") == 1, "the connected client's subscribe under the new policy"
    assert not client.disconnected
    client.close()
    print("reload: a connected client's next subscribe follows the rewritten policy")


def check_new_user(args):
    client = connect_v5(args, f"new-{uuid.uuid4().hex[:8]}", "dave", "evad")
    assert client.connack == BAD_CREDENTIALS, f"dave before being added: {client.connack:#x}"
    client.close()
    with open(args.users_file, encoding="utf-8") as users:
        text = users.read()
    before = reloads(args, "users")
    replace_file(args.users_file, text + "\n" + args.new_user_line + "\n")
    await_reload(args, "users", before)
    client = connect_v5(args, f"new-{uuid.uuid4().hex[:8]}", "dave", "evad")
    client.close()
    assert client.connack == SUCCESS, f"dave once added: {client.connack:#x}"
    print("users: a user added to the users file is accepted without a restart")


def start_expiry(args):
    """Connects with the token that expires soon; `check_expiry` awaits the end."""
    client = connect_v5(args, "expiring", "ignored", args.expiring_token)
    assert client.connack == SUCCESS, f"the expiring token was refused: {client.connack:#x}"
    assert client.subscribe("users/svc-expiring/#") == 1, "the expiring client's own filter"
    return client


def check_expiry(client):
    deadline = time.monotonic() + 20 + DEADLINE
    with client.condition:
        ended = client.condition.wait_for(lambda: client.disconnected, deadline - time.monotonic())
    assert ended, "a client whose token expired is still connected"
    assert client.disconnect_reason == MAXIMUM_CONNECT_TIME, \
        f"expected DISCONNECT 0xA0, got {client.disconnect_reason:#x}"
    client.client.loop_stop()
    print("expiry: a token's connection ends with 0xA0 when the token expires")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--expired-token", required=True)
    parser.add_argument("--expiring-token", required=True)
    parser.add_argument("--users-file", required=True)
    parser.add_argument("--policy-file", required=True)
    parser.add_argument("--new-user-line", required=True)
    parser.add_argument("--metrics-url", required=True)
    args = parser.parse_args()
    expiring = start_expiry(args)
    check_connect(args)
    check_policy(args)
    check_ownership(args)
    check_policy_reload(args)
    check_new_user(args)
    check_expiry(expiring)
    print("auth: all checks passed")


if __name__ == "__main__":
    main()
