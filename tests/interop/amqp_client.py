"""An AMQP client that is not ours (pika), for interoperation tests.

  publish EXCHANGE KEY   publishes a plain message, a binary-mode CloudEvent
                         (cloudEvents_ headers) and a structured-mode one
  read EXCHANGE KEY N    binds a queue of its own to KEY and prints the next
                         N messages as JSON lines {"headers", "content_type",
                         "data"}; prints "ready" on stderr once bound
"""
import json
import sys

import pika

PARAMS = pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f")


def publish(exchange, key):
    conn = pika.BlockingConnection(PARAMS)
    ch = conn.channel()
    ch.exchange_declare(exchange, exchange_type="topic", durable=True)
    ch.basic_publish(exchange, key, b"plain hello", pika.BasicProperties(content_type="text/plain"))
    ch.basic_publish(
        exchange,
        key,
        b'{"n":1}',
        pika.BasicProperties(
            content_type="application/json",
            headers={
                "cloudEvents:specversion": "1.0",
                "cloudEvents:id": "py-binary",
                "cloudEvents:source": "urn:python",
                "cloudEvents:type": "py.binary",
                "cloudEvents:pyext": "yes",
            },
        ),
    )
    doc = {"specversion": "1.0", "id": "py-structured", "source": "urn:python", "type": "py.structured", "data": {"s": 1}}
    ch.basic_publish(exchange, key, json.dumps(doc).encode(), pika.BasicProperties(content_type="application/cloudevents+json"))
    conn.close()


def read(exchange, key, count):
    conn = pika.BlockingConnection(PARAMS)
    ch = conn.channel()
    ch.exchange_declare(exchange, exchange_type="topic", durable=True)
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, exchange, key)
    print("ready", file=sys.stderr, flush=True)
    seen = 0
    for method, props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=30):
        if method is None:
            break
        print(json.dumps({"headers": props.headers or {}, "content_type": props.content_type, "data": body.decode("utf-8", "replace")}), flush=True)
        seen += 1
        if seen == count:
            break
    conn.close()


if __name__ == "__main__":
    if sys.argv[1] == "publish":
        publish(sys.argv[2], sys.argv[3])
    else:
        read(sys.argv[2], sys.argv[3], int(sys.argv[4]))
