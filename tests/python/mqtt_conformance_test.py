"""MQTT 5 conformance checks with paho-mqtt (issue 16): session resume without a new expiry, message
expiry across the time offline, user properties unaltered, Maximum Packet Size, `$` topics and
Server Keep Alive.

Run by tests/mqtt_conformance.rs against a running gateway (embedded log or Kafka), started with
`mqtt.max_keep_alive = 300s` and `mqtt.courier_id_property` as `--courier-id-property` says. Every
check uses topics and client ids of its own. Exits non-zero on any failure; prints one line per check.
"""

import argparse
import socket
import struct
import time

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_client_test import Peer, unique

SETTLE = 1.0  # after the last expected message: a duplicate would have arrived by now


def payloads(peer):
    with peer.condition:
        return [m.payload for m in peer.messages]


def persistent_subscriber_away(args, prefix):
    """A client with a persistent session subscribed to `<base>/#` at QoS 1 and gone; returns the
    base topic, its client id, and a connected publisher."""
    base = unique(prefix)
    client_id = unique("device")
    device = Peer(args, client_id=client_id, clean=True, expiry=300)
    device.connect()
    device.subscribe(f"{base}/#", qos=1)
    device.disconnect()
    publisher = Peer(args)
    publisher.connect()
    return base, client_id, publisher


def check_resume_without_expiry(args):
    """A session made with an expiry, resumed with clean start 0 and no expiry (paho's default),
    delivers every queued QoS 1 and QoS 2 message exactly once; it then ends with that connection."""
    for first_clean in (False, True):
        base = unique("resume")
        client_id = unique("device")
        device = Peer(args, client_id=client_id, clean=first_clean, expiry=99999)
        device.connect()
        device.subscribe(f"{base}/q1/#", qos=1)
        device.subscribe(f"{base}/q2/#", qos=2)
        device.disconnect()
        publisher = Peer(args)
        publisher.connect()
        sent = []
        for i in range(10):
            for qos in (1, 2):
                payload = f"q{qos}-{i}".encode()
                publisher.publish(f"{base}/q{qos}/{i}", payload, qos=qos)
                sent.append(payload)
        back = Peer(args, client_id=client_id, clean=False, expiry=None)
        assert back.connect() is True, "session not present"
        back.wait_for(len(sent))
        time.sleep(SETTLE)
        got = payloads(back)
        assert sorted(got) == sorted(sent), f"expected each of {len(sent)} once, got {sorted(got)}"
        qos_of = {m.payload: m.qos for m in back.messages}
        assert all(qos_of[p] == int(p[1:2]) for p in sent), qos_of
        back.disconnect()
        # The old connection ends on its own time after DISCONNECT (in front of Kafka its readers
        # commit and leave their groups first), so a reconnect at once may still find the session:
        # within a few seconds it must be gone.
        deadline = time.time() + 10
        while True:
            again = Peer(args, client_id=client_id, clean=False, expiry=None)
            present = again.connect()
            again.disconnect()
            if not present:
                break
            assert time.time() < deadline, "a session resumed with expiry 0 outlived its connection"
            time.sleep(0.2)
        publisher.disconnect()
    print("resume: clean start 0 without an expiry delivers every queued QoS 1 and 2 message once, "
          "then the session ends with the connection")


def check_subscribe_then_leave_at_once(args):
    """Nothing published after SUBACK is skipped, however soon the client leaves."""
    publisher = Peer(args)
    publisher.connect()
    rounds = args.rounds
    for round_ in range(rounds):
        base = unique("leave")
        client_id = unique("quick")
        device = Peer(args, client_id=client_id, clean=True, expiry=300)
        device.connect()
        device.subscribe(f"{base}/#", qos=1)
        device.disconnect()
        sent = [f"{round_}-{i}".encode() for i in range(5)]
        for payload in sent:
            publisher.publish(f"{base}/x", payload, qos=1)
        back = Peer(args, client_id=client_id, clean=False, expiry=300)
        assert back.connect() is True, "session not present"
        back.wait_for(len(sent), f"round {round_}'s messages")
        assert sorted(payloads(back)) == sorted(sent), payloads(back)
        back.disconnect()
        cleaned = Peer(args, client_id=client_id, clean=True)
        cleaned.connect()
        cleaned.disconnect()
    publisher.disconnect()
    print(f"subscribe then leave at once: {rounds} rounds, every message after SUBACK delivered")


def check_message_expiry_offline(args):
    base, client_id, publisher = persistent_subscriber_away(args, "msg-expiry")
    for name, seconds in (("short", 1), ("medium", 6), ("long", 600)):
        properties = Properties(PacketTypes.PUBLISH)
        properties.MessageExpiryInterval = seconds
        publisher.publish(f"{base}/{name}", name.encode(), qos=1, properties=properties)
    offline_from = time.time()
    time.sleep(2.5)
    back = Peer(args, client_id=client_id, clean=False, expiry=300)
    assert back.connect() is True
    back.wait_for(2)
    time.sleep(SETTLE)
    offline = time.time() - offline_from
    got = {m.payload: m.properties.MessageExpiryInterval for m in back.messages}
    assert sorted(got) == [b"long", b"medium"], f"expected medium and long, got {got}"
    # Counted down by the time offline: a message that kept its whole interval would be at 6 and 600.
    assert got[b"medium"] <= 6 - 2, got
    assert 600 - offline - 2 <= got[b"long"] <= 598, got
    back.disconnect()
    publisher.disconnect()
    print(f"message expiry: counted down across {offline:.1f} s offline {got}; the expired one dropped")


def check_user_properties_unaltered(args):
    base = unique("user-props")
    subscriber = Peer(args)
    subscriber.connect()
    subscriber.subscribe(f"{base}/#", qos=1)
    publisher = Peer(args)
    publisher.connect()
    sent = [("z", "1"), ("a", "é ü"), ("z", "0"), ("a", ""), ("k", "v" * 40)]
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = sent
    publisher.publish(f"{base}/a", b"x", qos=1, properties=properties)
    # A publisher's own courier-id (a ULID) is the record's id, and passes back where it was.
    own_id = "01JQ2Z3B4C5D6E7F8G9H0JKMNP"
    with_id = [("before", "1"), ("courier-id", own_id), ("after", "2")]
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = with_id
    publisher.publish(f"{base}/b", b"y", qos=1, properties=properties)
    # Two topics: in front of Kafka they may be two partitions, and MQTT orders per topic only.
    by_payload = {m.payload: m for m in subscriber.wait_for(2)}
    first, second = by_payload[b"x"], by_payload[b"y"]
    got = first.properties.UserProperty
    if args.courier_id_property:
        assert got[:-1] == sent, got
        assert got[-1][0] == "courier-id" and len(got[-1][1]) == 26, got
    else:
        assert got == sent, f"user properties altered: sent {sent}, got {got}"
    assert second.properties.UserProperty == with_id, second.properties.UserProperty
    subscriber.disconnect()
    publisher.disconnect()
    print(f"user properties: arrive as sent, in order (courier_id_property={args.courier_id_property})")


def check_responder_echoes_properties(args):
    base = unique("rpc")
    requester = Peer(args)
    requester.connect()
    requester.subscribe(f"{base}/replies", qos=1)
    responder = Peer(args)
    responder.connect()
    responder.subscribe(f"{base}/requests", qos=1)
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = f"{base}/replies"
    properties.CorrelationData = b"req-1"
    properties.UserProperty = [("trace", "t-1")]
    requester.publish(f"{base}/requests", b"ping", qos=1, properties=properties)
    (request,) = responder.wait_for(1)
    reply = Properties(PacketTypes.PUBLISH)
    reply.CorrelationData = request.properties.CorrelationData
    reply.UserProperty = request.properties.UserProperty  # echoed whole, as responders do
    code = responder.publish(request.properties.ResponseTopic, b"pong", qos=1, properties=reply)
    assert not code.is_failure, f"the echoed response was refused: {code}"
    (response,) = requester.wait_for(1)
    assert (response.payload, response.properties.CorrelationData) == (b"pong", b"req-1")
    for peer in (requester, responder):
        peer.disconnect()
    print("request/response: a responder echoing the request's properties gets its response delivered")


def check_maximum_packet_size(args):
    base = unique("max-packet")
    small_client = Peer(args, maximum_packet_size=64)
    small_client.connect()
    small_client.subscribe(f"{base}/#", qos=1)
    publisher = Peer(args)
    publisher.connect()
    publisher.publish(f"{base}/big", b"b" * 200, qos=1)
    publisher.publish(f"{base}/small", b"s" * 32, qos=1)
    (message,) = small_client.wait_for(1)
    time.sleep(SETTLE)
    assert [m.payload for m in small_client.messages] == [b"s" * 32], small_client.messages
    small_client.disconnect()
    publisher.disconnect()
    print("maximum packet size 64: the 32-byte message arrives, the 200-byte one is not sent")


def check_dollar_topics(args):
    base = unique("dollar")
    everything = Peer(args)
    everything.connect()
    everything.subscribe("#", qos=1)
    dollar = Peer(args)
    dollar.connect()
    dollar.subscribe(f"${base}/#", qos=1)
    publisher = Peer(args)
    publisher.connect()
    code = publisher.publish(f"${base}/y", b"accepted", qos=1)
    assert not code.is_failure, code
    (message,) = dollar.wait_for(1)
    assert message.topic == f"${base}/y"
    for reserved in ("$SYS/x", "$share/g/x"):
        code = publisher.publish(reserved, b"no", qos=1)
        assert code.value == 0x90, f"{reserved}: {code}"
    marker = unique("marker")
    publisher.publish(marker, b"after", qos=1)
    everything._wait(lambda: any(m.topic == marker for m in everything.messages), "the marker")
    seen = [m.topic for m in everything.messages if m.topic.startswith("$")]
    assert seen == [], f"'#' matched $ topics: {seen}"
    for peer in (everything, dollar, publisher):
        peer.disconnect()
    print("$ topics: accepted and delivered to $ filters, never to '#'; $SYS and $share refused with 0x90")


def check_server_keep_alive(args):
    for asked, told in ((0, 300), (1000, 300), (30, None)):
        peer = Peer(args, keep_alive=asked)
        peer.connect()
        got = getattr(peer.connack_properties, "ServerKeepAlive", None)
        assert got == told, f"keep-alive {asked}: Server Keep Alive {got}, expected {told}"
        peer.disconnect()
    print("server keep alive: 0 and 1000 are told 300; 30 is kept")


def will_of(topic, delay=None):
    properties = Properties(PacketTypes.WILLMESSAGE)
    if delay is not None:
        properties.WillDelayInterval = delay
    return (topic, b"gone", 1, False, properties)


def check_will_rules(args):
    """[MQTT-3.1.2-8]: only a normal DISCONNECT (0x00) deletes the will; a takeover publishes it; a
    will whose delay outlasts the session goes out when the session ends."""
    base = unique("will-rules")
    watcher = Peer(args)
    watcher.connect()
    watcher.subscribe(f"{base}/#", qos=1)
    for code in (0x00, 0x04, 0x80):
        peer = Peer(args, will=will_of(f"{base}/code-{code:02x}"))
        peer.connect()
        peer.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=code))
        peer.client.loop_stop()
    taken_id = unique("taken")
    # Not reconnecting once taken over: paho would take the id back, and each round would publish
    # the will again.
    taken = Peer(args, client_id=taken_id, will=will_of(f"{base}/taken-over"), reconnect=False)
    taken.connect()
    successor = Peer(args, client_id=taken_id)
    successor.connect()
    # The successor starts a session of its own (Clean Start 1): the taken one ends, and its will
    # goes out at once although it has a delay.
    resumable_id = unique("ended")
    ended = Peer(args, client_id=resumable_id, clean=True, expiry=600, reconnect=False,
                 will=will_of(f"{base}/session-replaced", delay=600))
    ended.connect()
    replacing = Peer(args, client_id=resumable_id, clean=True, expiry=600)
    replacing.connect()
    # A 600 s delay, but the session ends with the connection (no expiry): published at once.
    short_lived = Peer(args, will=will_of(f"{base}/session-ended", delay=600))
    short_lived.connect()
    short_lived.drop()
    expected = [f"{base}/code-04", f"{base}/code-80", f"{base}/taken-over", f"{base}/session-ended",
                f"{base}/session-replaced"]
    watcher.wait_for(len(expected), "wills")
    time.sleep(SETTLE)
    topics = sorted(m.topic for m in watcher.messages)
    assert topics == sorted(expected), f"expected wills {sorted(expected)}, got {topics}"
    for peer in (taken, ended):
        peer.client.loop_stop()
    for peer in (successor, replacing, watcher):
        peer.disconnect()
    print("will: kept by DISCONNECT 0x04 and 0x80, deleted by 0x00; published on takeover (at once "
          "when the successor starts anew); a delay longer than the session ends with it")


def varint(value):
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def raw_v5_connack(args, properties=b"", client_id=b"raw"):
    """The CONNACK (after its fixed header) to an MQTT 5 CONNECT written by hand (paho will not send
    the values these checks need)."""
    variable = b"\x00\x04MQTT\x05\x02\x00\x3c" + varint(len(properties)) + properties
    body = variable + struct.pack(">H", len(client_id)) + client_id
    with socket.create_connection((args.host, args.port), timeout=30) as sock:
        sock.sendall(b"\x10" + varint(len(body)) + body)
        header = b""
        while len(header) < 2:
            chunk = sock.recv(2 - len(header))
            assert chunk, "closed before a CONNACK"
            header += chunk
        assert header[:1] == b"\x20", f"expected CONNACK, got {header!r}"
        rest = b""
        while len(rest) < header[1]:
            chunk = sock.recv(header[1] - len(rest))
            assert chunk, "closed before the whole CONNACK"
            rest += chunk
        return rest


def raw_v5_connack_code(args, properties=b"", client_id=b"raw"):
    return raw_v5_connack(args, properties, client_id)[1]


def check_refusals(args):
    """CONNECT and PUBLISH fields the spec forbids are refused with the right reason; a client that
    asks for no problem information gets no reason string on a refused publish [MQTT-3.1.2-29]."""
    assert raw_v5_connack_code(args) == 0x00, "a plain CONNECT"
    assert raw_v5_connack_code(args, b"\x21\x00\x00") == 0x82, "Receive Maximum 0"
    assert raw_v5_connack_code(args, b"\x27\x00\x00\x00\x00") == 0x82, "Maximum Packet Size 0"
    assert raw_v5_connack_code(args, client_id=b"nul\x00id") == 0x81, "U+0000 in the client id"
    # Refused for its authentication method; the reason string would pass its 24-byte limit.
    connack = raw_v5_connack(args, b"\x27\x00\x00\x00\x18\x15\x00\x01x")
    assert connack[1] == 0x8C and len(connack) <= 24 - 2, f"CONNACK past the client's limit: {connack!r}"

    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("key", "nul\0value")]
    for what, topic, props in (("a user property", unique("nul"), properties),
                               ("the topic", unique("nul") + "\0x", None)):
        sender = Peer(args, reconnect=False)
        sender.connect()
        sender.client.publish(topic, b"x", qos=1, properties=props)
        sender._wait(lambda: sender.disconnected is not None, "the server to close the connection")
        assert sender.disconnected.value == 0x81, f"U+0000 in {what}: {sender.disconnected}"
        sender.client.loop_stop()

    for asked, expect_text in ((None, True), (0, False)):
        peer = Peer(args)
        properties = Properties(PacketTypes.CONNECT)
        if asked is not None:
            properties.RequestProblemInformation = asked
        answers = []
        peer.client.on_publish = lambda c, u, mid, code, props: answers.append((code, props))
        peer.client.connect(args.host, args.port, clean_start=True, properties=properties)
        peer.client.loop_start()
        peer._wait(lambda: peer.connected is not None, "CONNACK")
        peer.client.publish("$SYS/x", b"no", qos=1)
        peer._wait(lambda: answers, "PUBACK")
        code, props = answers[0]
        assert code.value == 0x90, code
        has_text = bool(getattr(props, "ReasonString", None))
        assert has_text == expect_text, f"problem information {asked}: reason string {has_text}"
        peer.disconnect()
    print("refusals: Receive Maximum 0 and Maximum Packet Size 0 get 0x82, U+0000 gets 0x81; "
          "no reason string past the client's Maximum Packet Size, nor for a client that asks for no "
          "problem information")


def raw_v311_connect(args, keep_alive):
    """A 3.1.1 CONNECT by hand (paho would ping on its own)."""
    client_id = unique("raw").encode()
    variable = b"\x00\x04MQTT\x04\x02" + struct.pack(">H", keep_alive)
    payload = struct.pack(">H", len(client_id)) + client_id
    body = variable + payload
    sock = socket.create_connection((args.host, args.port), timeout=30)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00", "CONNACK"
    return sock


def check_v311_keep_alive_limit(args):
    """A 3.1.1 client asking for more than mqtt.max_keep_alive is held to it: silent for 1.5 times the
    limit, it is closed. (Run against a gateway with a 2 s limit.)"""
    sock = raw_v311_connect(args, 65535)
    started = time.time()
    sock.settimeout(30)
    assert sock.recv(1) == b"", "expected the gateway to close the silent connection"
    waited = time.time() - started
    # Slowness only makes the close later: this fails only if the limit is not enforced.
    assert waited < 20, f"closed after {waited:.1f} s"
    sock.close()
    print(f"3.1.1 keep-alive 65535 held to the 2 s limit: closed after {waited:.1f} s of silence")


def check_resume_latency(args):
    """How soon the first queued message follows CONNACK on a resume (printed, not asserted)."""
    base, client_id, publisher = persistent_subscriber_away(args, "latency")
    publisher.publish(f"{base}/x", b"queued", qos=1)
    back = Peer(args, client_id=client_id, clean=False, expiry=300)
    assert back.connect() is True
    connected = time.time()
    back.wait_for(1)
    print(f"resume latency: first queued message {time.time() - connected:.3f} s after CONNACK")
    back.disconnect()
    publisher.disconnect()


def check_retained_cap(args):
    """A retained PUBLISH past its principal's cap (mqtt.max_retained_per_principal: run against a
    gateway with a cap of 2) is answered with PUBACK 0x97 Quota exceeded and not stored; the same
    message without retain goes through, and deleting a retained message makes room. Each step
    waits for a SUBSCRIBE's answer first: it comes once the gateway has read what was retained."""
    prefix = unique("capped")
    publisher = Peer(args)
    publisher.connect()

    def retained_now():
        reader = Peer(args)
        reader.connect()
        reader.subscribe(f"{prefix}/#")
        # The retained messages come with the SUBACK's batch; a marker published after them (not
        # retained) arrives after them, so nothing retained is missed.
        marker = unique("marker")
        publisher.publish(f"{prefix}/marker", marker.encode())
        reader._wait(lambda: any(m.payload == marker.encode() for m in reader.messages), "the marker")
        held = sorted(m.topic for m in reader.messages if m.retain)
        reader.disconnect()
        return held

    assert publisher.publish(f"{prefix}/1", b"one", retain=True).value == 0x00
    assert publisher.publish(f"{prefix}/2", b"two", retain=True).value == 0x00
    assert retained_now() == [f"{prefix}/1", f"{prefix}/2"]
    code = publisher.publish(f"{prefix}/3", b"three", retain=True)
    assert code.value == 0x97, f"a third retained message: {code}"
    assert publisher.publish(f"{prefix}/3", b"three, not retained").value == 0x00
    assert publisher.publish(f"{prefix}/1", b"", retain=True).value == 0x00
    assert retained_now() == [f"{prefix}/2"]
    assert publisher.publish(f"{prefix}/3", b"three", retain=True).value == 0x00
    assert retained_now() == [f"{prefix}/2", f"{prefix}/3"]
    publisher.disconnect()
    print("retained cap: a retained message past the principal's cap gets PUBACK 0x97 and is not "
          "stored; without retain it goes through; a deletion makes room")


CHECKS = {
    "resume": check_resume_without_expiry,
    "leave-at-once": check_subscribe_then_leave_at_once,
    "message-expiry": check_message_expiry_offline,
    "user-properties": check_user_properties_unaltered,
    "responder": check_responder_echoes_properties,
    "max-packet": check_maximum_packet_size,
    "dollar": check_dollar_topics,
    "keep-alive": check_server_keep_alive,
    "v311-keep-alive": check_v311_keep_alive_limit,
    "resume-latency": check_resume_latency,
    "will": check_will_rules,
    "refusals": check_refusals,
    "retained-cap": check_retained_cap,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--courier-id-property", action="store_true")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("checks", nargs="+", choices=sorted(CHECKS))
    args = parser.parse_args()
    args.version = "5"
    args.transport = "tcp"
    for name in args.checks:
        CHECKS[name](args)
    print("all checks passed")


if __name__ == "__main__":
    main()
