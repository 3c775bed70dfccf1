"""A NATS client that is not ours (nats-py), for interoperation tests.

  publish SUBJECT        publishes three messages: plain bytes, a binary-mode
                         CloudEvent (ce- headers) and a structured-mode one
  read SUBJECT N         prints the next N messages on SUBJECT as JSON lines
                         {"headers": {...}, "data": "<utf-8>"}; prints
                         "ready" on stderr once subscribed
"""
import asyncio
import json
import sys

import nats

URL = "nats://127.0.0.1:4222"


async def publish(subject):
    nc = await nats.connect(URL)
    await nc.publish(subject, b"plain hello", headers={"Content-Type": "text/plain"})
    await nc.publish(
        subject,
        b'{"n":1}',
        headers={
            "ce-specversion": "1.0",
            "ce-id": "py-binary",
            "ce-source": "urn:python",
            "ce-type": "py.binary",
            "ce-datacontenttype": "application/json",
            "ce-subject": "caf%C3%A9%20au%20lait",
            "ce-pyext": "yes",
        },
    )
    doc = {
        "specversion": "1.0",
        "id": "py-structured",
        "source": "urn:python",
        "type": "py.structured",
        "datacontenttype": "text/plain",
        "data": "structured text",
    }
    await nc.publish(subject, json.dumps(doc).encode(), headers={"Content-Type": "application/cloudevents+json"})
    await nc.flush()
    await nc.close()


async def read(subject, count):
    nc = await nats.connect(URL)
    sub = await nc.subscribe(subject)
    await nc.flush()
    print("ready", file=sys.stderr, flush=True)
    for _ in range(count):
        msg = await sub.next_msg(timeout=30)
        print(json.dumps({"headers": dict(msg.headers or {}), "data": msg.data.decode("utf-8", "replace")}), flush=True)
    await nc.close()


if __name__ == "__main__":
    if sys.argv[1] == "publish":
        asyncio.run(publish(sys.argv[2]))
    else:
        asyncio.run(read(sys.argv[2], int(sys.argv[3])))
