"""Courier's MQTT endpoint with paho-mqtt, the Eclipse Python client, in MQTT 3.1.1 or 5.

Run by tests/mqtt.rs against a running gateway (embedded log or Kafka). Every check uses topics of its
own, so the script can run twice against one gateway (once per protocol version). Exits non-zero on any
failure; prints one line per check.
"""

import argparse
import socket
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

DEADLINE = 45.0


class Peer:
    """One paho client with what it received, in order."""

    def __init__(self, args, client_id="", clean=True, expiry=None, will=None, receive_maximum=None,
                 manual_ack=False, maximum_packet_size=None, keep_alive=30, reconnect=True):
        self.args = args
        self.maximum_packet_size = maximum_packet_size
        self.keep_alive = keep_alive
        self.connack_properties = None
        self.v5 = args.version == "5"
        self.clean = clean
        self.expiry = expiry
        self.receive_maximum = receive_maximum
        self.messages = []
        self.acks = {}
        self.condition = threading.Condition()
        self.connected = None
        self.disconnected = None  # the server's DISCONNECT reason code, or the loss of the connection
        kwargs = {"client_id": client_id, "protocol": mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
                  "transport": args.transport}
        if not self.v5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, manual_ack=manual_ack,
                                  reconnect_on_failure=reconnect, **kwargs)
        if will:
            self.client.will_set(*will)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.condition:
            self.connected = (reason_code, flags.session_present)
            self.connack_properties = properties
            self.condition.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.condition:
            self.disconnected = reason_code
            self.condition.notify_all()

    def _on_message(self, client, userdata, message):
        with self.condition:
            self.messages.append(message)
            self.condition.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.condition:
            self.acks[mid] = reason_code
            self.condition.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.condition:
            self.acks[mid] = reason_codes
            self.condition.notify_all()

    def _wait(self, predicate, what):
        with self.condition:
            if not self.condition.wait_for(predicate, DEADLINE):
                raise AssertionError(f"timed out waiting for {what}")

    def connect(self):
        """Connects and returns session_present."""
        kwargs = {}
        if self.v5:
            kwargs["clean_start"] = self.clean
            properties = Properties(PacketTypes.CONNECT)
            if self.expiry is not None:
                properties.SessionExpiryInterval = self.expiry
            if self.receive_maximum is not None:
                properties.ReceiveMaximum = self.receive_maximum
            if self.maximum_packet_size is not None:
                properties.MaximumPacketSize = self.maximum_packet_size
            kwargs["properties"] = properties
        self.client.connect(self.args.host, self.args.port, keepalive=self.keep_alive, **kwargs)
        self.client.loop_start()
        self._wait(lambda: self.connected is not None, "CONNACK")
        reason_code, session_present = self.connected
        assert not reason_code.is_failure, f"refused: {reason_code}"
        return session_present

    def subscribe(self, topic, qos=1, options=None, properties=None):
        if options is not None:
            result, mid = self.client.subscribe(topic, options=options, properties=properties)
        else:
            result, mid = self.client.subscribe(topic, qos, properties=properties)
        assert result == mqtt.MQTT_ERR_SUCCESS
        self._wait(lambda: mid in self.acks, f"SUBACK for {topic}")
        codes = self.acks[mid]
        assert all(not code.is_failure for code in codes), f"subscription to {topic} refused: {codes}"
        return codes

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        """Publishes and, for QoS 1 and 2, waits for the ack; returns the MQTT 5 reason code."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos == 0:
            return None
        self._wait(lambda: info.mid in self.acks, f"ack of {topic}")
        return self.acks[info.mid]

    def wait_for(self, count, what="messages"):
        self._wait(lambda: len(self.messages) >= count, f"{count} {what} (have {len(self.messages)})")
        return list(self.messages)

    def disconnect(self):
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self):
        """Goes away without DISCONNECT, as a device losing power does."""
        wrapped = self.client.socket()
        getattr(wrapped, "_socket", wrapped).shutdown(socket.SHUT_RDWR)  # under a WebSocket wrapper
        self.client.loop_stop()


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def check_qos_levels(args):
    base = unique("qos")
    subscriber = Peer(args)
    subscriber.connect()
    subscriber.subscribe(f"{base}/#", qos=2)
    downgraded = Peer(args)
    downgraded.connect()
    downgraded.subscribe(f"{base}/+/x", qos=0)
    publisher = Peer(args)
    publisher.connect()
    for qos in (0, 1, 2):
        publisher.publish(f"{base}/{qos}/x", f"at-{qos}".encode(), qos=qos)
    received = subscriber.wait_for(3)
    assert sorted((m.topic, m.payload, m.qos) for m in received) == [
        (f"{base}/{q}/x", f"at-{q}".encode(), q) for q in (0, 1, 2)
    ], [(m.topic, m.payload, m.qos) for m in received]
    assert [m.qos for m in downgraded.wait_for(3)] == [0, 0, 0]
    time.sleep(0.5)  # a duplicate of the QoS 2 message would have arrived by now
    assert len(subscriber.messages) == 3, "a message arrived twice"
    for peer in (subscriber, downgraded, publisher):
        peer.disconnect()
    print("qos: 0, 1 and 2 delivered at min(publish, subscription) QoS, each once")


def check_retained(args):
    base = unique("retained")
    publisher = Peer(args)
    publisher.connect()
    publisher.publish(f"{base}/state", b"on", qos=1, retain=True)
    late = Peer(args)
    late.connect()
    late.subscribe(f"{base}/#", qos=1)
    (message,) = late.wait_for(1)
    assert (message.topic, message.payload, message.retain) == (f"{base}/state", b"on", True)
    publisher.publish(f"{base}/state", b"", qos=1, retain=True)  # deletes it
    after = Peer(args)
    after.connect()
    after.subscribe(f"{base}/#", qos=1)
    publisher.publish(f"{base}/marker", b"live", qos=1)
    first = after.wait_for(1)[0]
    assert (first.topic, first.payload, first.retain) == (f"{base}/marker", b"live", False), first.payload
    for peer in (publisher, late, after):
        peer.disconnect()
    print("retained: delivered to later subscribers with the retain flag; an empty payload deletes it")


def check_persistent_session(args):
    base = unique("session")
    client_id = unique("device")
    device = Peer(args, client_id=client_id, clean=False, expiry=300)
    assert device.connect() is False
    device.subscribe(f"{base}/#", qos=1)
    device.disconnect()
    publisher = Peer(args)
    publisher.connect()
    for i in range(10):
        publisher.publish(f"{base}/{i}", f"queued-{i}".encode(), qos=1)
    back = Peer(args, client_id=client_id, clean=False, expiry=300)
    assert back.connect() is True, "session not present"
    payloads = sorted(m.payload for m in back.wait_for(10))
    assert payloads == sorted(f"queued-{i}".encode() for i in range(10)), payloads
    back.disconnect()
    fresh = Peer(args, client_id=client_id, clean=True)
    assert fresh.connect() is False, "clean start kept the session"
    fresh.disconnect()
    publisher.disconnect()
    print("sessions: messages queued while away arrive on reconnect; clean start discards the session")


def check_will(args):
    base = unique("will")
    watcher = Peer(args)
    watcher.connect()
    watcher.subscribe(f"{base}/#", qos=1)
    device = Peer(args, will=(f"{base}/status", b"offline", 1, False))
    device.connect()
    polite = Peer(args, will=(f"{base}/polite", b"never", 1, False))
    polite.connect()
    polite.disconnect()
    device.drop()
    (message,) = watcher.wait_for(1, "will")
    assert (message.topic, message.payload) == (f"{base}/status", b"offline")
    watcher.disconnect()
    print("will: published when a client vanishes, not when it disconnects")


def check_shared_subscription(args):
    base = unique("shared")
    group = unique("g")
    members = [Peer(args), Peer(args)]
    for member in members:
        member.connect()
        member.subscribe(f"$share/{group}/{base}/#", qos=1)
    time.sleep(2)  # both members have joined the group and hold partitions
    publisher = Peer(args)
    publisher.connect()
    sent = {f"{i}".encode() for i in range(40)}
    for i in range(40):
        publisher.publish(f"{base}/{i % 8}", f"{i}".encode(), qos=1)
    deadline = time.time() + DEADLINE
    while time.time() < deadline:
        got = [m.payload for member in members for m in member.messages]
        if set(got) >= sent:
            break
        time.sleep(0.05)
    got = [m.payload for member in members for m in member.messages]
    assert set(got) == sent, f"missing {sorted(sent - set(got))}"
    shares = [len(member.messages) for member in members]
    for peer in members + [publisher]:
        peer.disconnect()
    print(f"shared: 40 messages spread over the group's members {shares}, "
          f"{len(got) - len(set(got))} delivered twice")


def check_v5_properties(args):
    base = unique("props")
    subscriber = Peer(args)
    subscriber.connect()
    subscription = Properties(PacketTypes.SUBSCRIBE)
    subscription.SubscriptionIdentifier = 42
    subscriber.subscribe(f"{base}/#", options=SubscribeOptions(qos=1), properties=subscription)
    publisher = Peer(args)
    publisher.connect()
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("trace", "t-1"), ("trace", "t-2"), ("site", "lyon")]
    properties.ContentType = "application/json"
    properties.ResponseTopic = f"{base}/replies"
    properties.CorrelationData = b"\x00\x01corr"
    properties.MessageExpiryInterval = 3600
    properties.PayloadFormatIndicator = 1
    publisher.publish(f"{base}/a", b'{"t": 21.5}', qos=1, properties=properties)
    (message,) = subscriber.wait_for(1)
    got = message.properties
    assert got.UserProperty == [("trace", "t-1"), ("trace", "t-2"), ("site", "lyon")], got.UserProperty
    assert got.ContentType == "application/json"
    assert got.ResponseTopic == f"{base}/replies"
    assert got.CorrelationData == b"\x00\x01corr"
    assert 3590 <= got.MessageExpiryInterval <= 3600, got.MessageExpiryInterval
    assert got.PayloadFormatIndicator == 1
    assert got.SubscriptionIdentifier == [42], got.SubscriptionIdentifier

    # Topic alias: the second publish names the topic only by alias.
    aliased = Properties(PacketTypes.PUBLISH)
    aliased.TopicAlias = 3
    publisher.publish(f"{base}/aliased", b"first", qos=1, properties=aliased)
    publisher.publish("", b"second", qos=1, properties=aliased)
    received = subscriber.wait_for(3)
    assert [(m.topic, m.payload) for m in received[1:]] == [
        (f"{base}/aliased", b"first"), (f"{base}/aliased", b"second")]

    # A refused publish gets its reason code, and the connection stays up.
    code = publisher.publish("$SYS/x", b"no", qos=1)
    assert code.value == 0x90, code
    assert publisher.publish(f"{base}/still-up", b"yes", qos=1).value == 0
    subscriber.disconnect()
    publisher.disconnect()
    print("v5: user properties, content type, response topic, correlation data, expiry, "
          "subscription ids and topic aliases round-trip; refusals carry reason codes")


def check_no_local_and_retain_as_published(args):
    base = unique("nolocal")
    chatty = Peer(args)
    chatty.connect()
    chatty.subscribe(f"{base}/#", options=SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True))
    other = Peer(args)
    other.connect()
    chatty.publish(f"{base}/own", b"mine", qos=1)
    other.publish(f"{base}/theirs", b"retained", qos=1, retain=True)
    (message,) = chatty.wait_for(1)
    assert (message.topic, message.retain) == (f"{base}/theirs", True), message.topic
    time.sleep(0.3)
    assert len(chatty.messages) == 1, "no-local delivered the client's own message"
    chatty.disconnect()
    other.disconnect()
    print("v5: no-local and retain-as-published")


def will_with_delay(topic, seconds):
    properties = Properties(PacketTypes.WILLMESSAGE)
    properties.WillDelayInterval = seconds
    return (topic, b"offline", 1, False, properties)


def check_will_delay(args):
    """MQTT 5 will delay: the will waits for its delay, and a reconnect within it cancels it."""
    base = unique("will-delay")
    watcher = Peer(args)
    watcher.connect()
    watcher.subscribe(f"{base}/#", qos=1)
    late = Peer(args, client_id=unique("late"), clean=False, expiry=60,
                will=will_with_delay(f"{base}/late", 2))
    late.connect()
    back_id = unique("back")
    back = Peer(args, client_id=back_id, clean=False, expiry=60,
                will=will_with_delay(f"{base}/back", 2))
    back.connect()
    dropped_at = time.time()
    late.drop()
    back.drop()
    returned = Peer(args, client_id=back_id, clean=False, expiry=60)
    assert returned.connect() is True, "the session of a client back within its will delay was lost"
    returned_at = time.time()
    (message,) = watcher.wait_for(1, "the delayed will")
    waited = time.time() - dropped_at
    assert message.topic == f"{base}/late", f"unexpected will {message.topic}"
    # Slowness can only make a will later, so this cannot fail by chance: it fails if the delay is ignored.
    assert waited >= 1.5, f"the will came {waited:.2f} s after the drop, before its 2 s delay"
    time.sleep(max(0.0, returned_at + 4 - time.time()))
    topics = [m.topic for m in watcher.messages]
    assert topics == [f"{base}/late"], f"a will was sent for a client that came back: {topics}"
    returned.disconnect()
    watcher.disconnect()
    print(f"will delay: sent {waited:.1f} s after the drop (delay 2 s); cancelled by a reconnect within it")


def check_session_expiry(args):
    """MQTT 5 session expiry: a session is kept for its expiry interval after the client leaves, then
    it is gone (no session present, nothing queued delivered)."""
    base = unique("expiry")
    short_id, long_id = unique("short"), unique("long")
    for client_id, expiry in ((short_id, 1), (long_id, 60)):
        device = Peer(args, client_id=client_id, clean=False, expiry=expiry)
        device.connect()
        device.subscribe(f"{base}/{client_id}/#", qos=1)
        device.disconnect()
    publisher = Peer(args)
    publisher.connect()
    for client_id in (short_id, long_id):
        publisher.publish(f"{base}/{client_id}/x", b"queued", qos=1)
    time.sleep(3)
    expired = Peer(args, client_id=short_id, clean=False, expiry=60)
    assert expired.connect() is False, "a session past its 1 s expiry was still present"
    kept = Peer(args, client_id=long_id, clean=False, expiry=60)
    assert kept.connect() is True, "a session within its 60 s expiry was gone"
    assert [m.payload for m in kept.wait_for(1)] == [b"queued"]
    time.sleep(1)
    assert expired.messages == [], "an expired session's queued message was delivered"
    for peer in (expired, kept, publisher):
        peer.disconnect()
    print("session expiry: a session past its expiry is gone; one within it keeps its queued message")


def check_receive_maximum(args):
    """MQTT 5 receive maximum: the gateway keeps at most that many QoS 1 deliveries unacknowledged."""
    base = unique("receive-max")
    reader = Peer(args, receive_maximum=2, manual_ack=True)
    reader.connect()
    reader.subscribe(f"{base}/#", qos=1)
    publisher = Peer(args)
    publisher.connect()
    for i in range(6):
        publisher.publish(f"{base}/t", f"{i}".encode(), qos=1)
    reader.wait_for(2)
    time.sleep(1.5)
    held = len(reader.messages)
    assert held == 2, f"{held} deliveries unacknowledged with a receive maximum of 2"
    acked = 0
    while acked < 6:
        with reader.condition:
            pending = reader.messages[acked:]
        for message in pending:
            reader.client.ack(message.mid, message.qos)
        acked += len(pending)
        if acked < 6:
            reader.wait_for(acked + 1)
    payloads = [m.payload for m in reader.messages]
    assert payloads == [f"{i}".encode() for i in range(6)], payloads
    reader.disconnect()
    publisher.disconnect()
    print("receive maximum: 2 deliveries unacknowledged at most; the rest follow the acks, in order")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", choices=["3.1.1", "5"], required=True)
    parser.add_argument("--transport", choices=["tcp", "websockets"], default="tcp")
    args = parser.parse_args()
    checks = [check_qos_levels, check_retained, check_persistent_session, check_will,
              check_shared_subscription]
    if args.version == "5":
        checks += [check_v5_properties, check_no_local_and_retain_as_published, check_will_delay,
                   check_session_expiry, check_receive_maximum]
    for check in checks:
        check(args)
    print(f"MQTT {args.version} over {args.transport}: all checks passed")


if __name__ == "__main__":
    main()
