"""Hostile messages from clients that are not ours, for the inbound tests.

  nats PORT SUBJECT            raw NATS protocol over a socket (nats-py
                               cannot send header bytes that are not UTF-8)
  redis-stream STREAM          redis-py, stream entries (XADD)
  redis-pubsub CHANNEL         redis-py, pub/sub payloads
  amqp EXCHANGE KEY            pika, headers of every kind
  mqtt5 TOPIC | mqtt311 TOPIC  paho-mqtt

Each sends its link's hostile messages, each with `hostile:<case>` in its
body, then its good ones, and prints one JSON line: {"hostile": [cases],
"good": [event ids]}. Every hostile message must reach the dead-letter
channel, never a handler; every good one must reach the handler.
"""
import json
import socket
import sys
import time


def ce(id_, **extra):
    """Binary-mode attributes of a valid event, as text."""
    attrs = {"specversion": "1.0", "id": id_, "source": "urn:hostile", "type": "good.item"}
    attrs.update(extra)
    return attrs


def structured(case, **attrs):
    doc = {"specversion": "1.0", "id": case, "source": "urn:hostile", "type": "t", "data": f"hostile:{case}"}
    doc.update(attrs)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


STRUCTURED = "application/cloudevents+json"

# Structured-mode documents that no link may hand to a handler.
BAD_DOCUMENTS = {
    "json-not-json": b'{"specversion": "1.0", "data": "hostile:json-not-json"',
    "json-old-spec": structured("json-old-spec", specversion="0.3"),
    "json-no-id": structured("json-no-id", id=None),
    "json-no-source": structured("json-no-source", source=None),
    "json-empty-type": structured("json-empty-type", type=""),
    "json-newline-id": structured("json-newline-id", id="a\nb"),
    "json-bad-time": structured("json-bad-time", time="yesterday"),
    "json-bad-base64": json.dumps(
        {"specversion": "1.0", "id": "x", "source": "s", "type": "t", "data_base64": "hostile:json-bad-base64!"}
    ).encode(),
    "json-array-id": structured("json-array-id", id=["hostile"]),
    "json-bad-extension": structured("json-bad-extension", **{"Bad-Name": "x"}),
}


def print_result(hostile, good):
    print(json.dumps({"hostile": hostile, "good": good}), flush=True)


# --- NATS: raw protocol -----------------------------------------------------


def nats(port, subject):
    s = socket.create_connection(("127.0.0.1", int(port)))
    s.recv(65536)  # INFO
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n')
    subject = subject.encode()

    def hpub(header_lines, body):
        block = b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in header_lines) + b"\r\n"
        s.sendall(
            b"HPUB %s %d %d\r\n" % (subject, len(block), len(block) + len(body)) + block + body + b"\r\n"
        )

    def attrs(d):
        return [f"ce-{k}: {v}".encode() for k, v in d.items()]

    hostile = {
        "nats-value-not-utf8": attrs(ce("x")) + [b"ce-subject: caf\xff"],
        "nats-name-not-utf8": attrs(ce("x")) + [b"x-\xff: 1"],
        "nats-line-without-colon": attrs(ce("x")) + [b"no colon here"],
        "nats-bad-percent": attrs(ce("x", subject="%FF%FE")),
        "nats-percent-newline-id": attrs(ce("a%0Ab")),
        "nats-old-spec": attrs(ce("x", specversion="0.3")),
        "nats-no-id": [b"ce-specversion: 1.0", b"ce-source: s", b"ce-type: t"],
        "nats-no-type": [b"ce-specversion: 1.0", b"ce-id: 1", b"ce-source: s"],
        "nats-bad-time": attrs(ce("x", time="yesterday")),
        "nats-bad-extension": attrs(ce("x")) + [b"ce-bad_name: 1"],
    }
    for case, lines in hostile.items():
        hpub(lines, f"hostile:{case}".encode())
    for case, doc in BAD_DOCUMENTS.items():
        hpub([b"Content-Type: " + STRUCTURED.encode()], doc)
    good = ["good-raw-utf8", "good-percent", "good-last"]
    hpub(attrs(ce("good-raw-utf8", subject="café ✓")), b"good")
    hpub(attrs(ce("good-percent", subject="caf%C3%A9")), b"good")
    hpub(attrs(ce("good-last")), b"good")
    s.sendall(b"PING\r\n")
    s.recv(65536)  # PONG: the server has everything
    s.close()
    print_result(list(hostile) + list(BAD_DOCUMENTS), good)


# --- Redis --------------------------------------------------------------------


def redis_stream(stream):
    import redis

    r = redis.Redis(host="127.0.0.1", port=6379)

    def fields(attrs, body, **raw):
        f = {f"ce-{k}".encode(): str(v).encode() for k, v in attrs.items()}
        f.update(raw)
        f[b"data"] = body
        return f

    hostile = {
        "redis-value-not-utf8": fields(ce("x"), b"hostile:redis-value-not-utf8", **{"ce-subject": b"\xff"}),
        "redis-ce-name-not-utf8": fields(ce("x"), b"hostile:redis-ce-name-not-utf8", **{"ce-\xff": b"1"}),
        "redis-old-spec": fields(ce("x", specversion="0.3"), b"hostile:redis-old-spec"),
        "redis-no-source": {b"ce-specversion": b"1.0", b"ce-id": b"1", b"ce-type": b"t", b"data": b"hostile:redis-no-source"},
        "redis-control-id": fields(ce("a\x00b"), b"hostile:redis-control-id"),
        "redis-bad-time": fields(ce("x", time="2024-13-45"), b"hostile:redis-bad-time"),
    }
    for case, f in hostile.items():
        r.xadd(stream, f)
    for case, doc in BAD_DOCUMENTS.items():
        r.xadd(stream, {b"content-type": STRUCTURED.encode(), b"data": doc})
    # A valid event with a junk field whose name is not UTF-8: the field is
    # not an attribute, so the event goes through (it used to stall the group).
    r.xadd(stream, {**fields(ce("good-junk-field"), b"good"), b"x-\xff\xfe": b"\xff"})
    r.xadd(stream, fields(ce("good-raw-utf8", subject="café ✓"), b"good"))
    r.xadd(stream, fields(ce("good-last"), b"good"))
    print_result(list(hostile) + list(BAD_DOCUMENTS), ["good-junk-field", "good-raw-utf8", "good-last"])


def redis_pubsub(channel):
    import redis

    r = redis.Redis(host="127.0.0.1", port=6379)
    for case, doc in BAD_DOCUMENTS.items():
        if case == "json-not-json":
            continue  # not JSON at all: a plain message, wrapped, not malformed
        r.publish(channel, doc)
    doc = {"specversion": "1.0", "id": "good-last", "source": "urn:hostile", "type": "good.item", "subject": "café ✓"}
    r.publish(channel, json.dumps(doc, ensure_ascii=False).encode())
    print_result([c for c in BAD_DOCUMENTS if c != "json-not-json"], ["good-last"])


# --- AMQP (pika) ----------------------------------------------------------------


class LongString(bytes):
    """Bytes pika sends as an AMQP long string ('S'), UTF-8 or not."""


def amqp(exchange, key):
    import pika
    import pika.data
    import struct

    encode_value = pika.data.encode_value

    def encode_long_string(pieces, value):
        if isinstance(value, LongString):
            pieces.append(struct.pack(">cI", b"S", len(value)))
            pieces.append(bytes(value))
            return 5 + len(value)
        return encode_value(pieces, value)

    pika.data.encode_value = encode_long_string

    conn = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f"))
    ch = conn.channel()

    def headers(attrs, **raw):
        h = {f"cloudEvents_{k}": v for k, v in attrs.items()}
        h.update(raw)
        return h

    hostile = {
        "amqp-value-not-utf8": headers(ce("x"), cloudEvents_subject=LongString(b"caf\xff")),
        "amqp-bytes-not-utf8": headers(ce("x"), cloudEvents_subject=b"\xff\xfe"),
        "amqp-old-spec": headers(ce("x", specversion="0.3")),
        "amqp-no-id": {"cloudEvents_specversion": "1.0", "cloudEvents_source": "s", "cloudEvents_type": "t"},
        "amqp-newline-source": headers(ce("x", source="a\r\nb")),
        "amqp-bad-time": headers(ce("x", time="soon")),
    }
    # pika encodes str names as UTF-8; a name that is not goes as bytes.
    hostile["amqp-name-not-utf8"] = headers(ce("x"))
    hostile["amqp-name-not-utf8"][b"cloudEvents_\xff"] = "x"
    for case, h in hostile.items():
        ch.basic_publish(exchange, key, f"hostile:{case}".encode(), pika.BasicProperties(headers=h))
    for case, doc in BAD_DOCUMENTS.items():
        ch.basic_publish(exchange, key, doc, pika.BasicProperties(content_type=STRUCTURED))
    junk = headers(ce("good-junk-header"))
    junk[b"x-\xff"] = LongString(b"\xff")
    ch.basic_publish(exchange, key, b"good", pika.BasicProperties(headers=junk))
    ch.basic_publish(exchange, key, b"good", pika.BasicProperties(headers=headers(ce("good-raw-utf8", subject="café ✓"))))
    ch.basic_publish(exchange, key, b"good", pika.BasicProperties(headers=headers(ce("good-last"))))
    conn.close()
    print_result(list(hostile) + list(BAD_DOCUMENTS), ["good-junk-header", "good-raw-utf8", "good-last"])


# --- MQTT (paho-mqtt) -------------------------------------------------------------


def mqtt(topic, version5):
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    protocol = mqtt.MQTTv5 if version5 else mqtt.MQTTv311
    import threading

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
    connected = threading.Event()
    c.on_connect = lambda *_: connected.set()
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    if not connected.wait(10):
        sys.exit("cannot connect to Mosquitto")

    def publish(body, attrs=None, content_type=None):
        props = None
        if version5:
            props = Properties(PacketTypes.PUBLISH)
            if attrs:
                props.UserProperty = list(attrs.items())
            if content_type:
                props.ContentType = content_type
        c.publish(topic, body, qos=1, properties=props).wait_for_publish(10)

    hostile = {}
    if version5:
        hostile = {
            "mqtt-old-spec": ce("x", specversion="0.3"),
            "mqtt-no-source": {"specversion": "1.0", "id": "1", "type": "t"},
            # Control characters and noncharacters never get here:
            # Mosquitto disconnects a publisher whose strings hold them
            # ("Malformed UTF-8").
            "mqtt-empty-type": ce("x", type=""),
            "mqtt-bad-time": ce("x", time="noon"),
            "mqtt-bad-extension": {**ce("x"), "Bad-Name": "1"},
        }
        for case, attrs in hostile.items():
            publish(f"hostile:{case}".encode(), attrs)
        for case, doc in BAD_DOCUMENTS.items():
            publish(doc, content_type=STRUCTURED)
        publish(b"good", ce("good-raw-utf8", subject="café ✓"))
        publish(b"good", ce("good-last"))
        good = ["good-raw-utf8", "good-last"]
        cases = list(hostile) + list(BAD_DOCUMENTS)
    else:
        cases = [c for c in BAD_DOCUMENTS if c != "json-not-json"]
        for case in cases:
            publish(BAD_DOCUMENTS[case])
        publish(json.dumps({**ce("good-last"), "subject": "café ✓"}, ensure_ascii=False).encode())
        good = ["good-last"]
    c.loop_stop()
    c.disconnect()
    print_result(cases, good)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "nats":
        nats(*args)
    elif command == "redis-stream":
        redis_stream(*args)
    elif command == "redis-pubsub":
        redis_pubsub(*args)
    elif command == "amqp":
        amqp(*args)
    elif command in ("mqtt5", "mqtt311"):
        mqtt(args[0], command == "mqtt5")
    else:
        sys.exit(f"unknown command {command}")
