"""Kafka clients that are not ours (confluent-kafka and kafka-python), with
the CloudEvents Python SDK's Kafka binding and its defaults (binary and
structured mode, the record key from `partitionkey`). Every string
attribute and extension holds non-ASCII text.

  produce BROKERS TOPIC N CLIENT MODE   N events made by the SDK, sent by
                                        CLIENT (confluent | kafka-python)
                                        in MODE (binary | structured); ids
                                        are `<CLIENT>-<MODE>-<i>`
  consume BROKERS TOPIC N CLIENT        reads N records from the start with
                                        CLIENT, parses each with the SDK's
                                        `from_kafka_event`, checks every
                                        attribute against what `produce`
                                        sends, prints a JSON report, exits
                                        1 on any difference
"""
import datetime
import json
import sys
import uuid

from cloudevents.core.bindings.kafka import (
    KafkaMessage,
    from_kafka_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.v1.event import CloudEvent

TIME = datetime.datetime(2026, 11, 25, 10, 0, tzinfo=datetime.timezone.utc)
DATA = {"message": "grüße ✓"}


def attributes(id_):
    text = "crème ✓ 日本語"
    return {
        "specversion": "1.0",
        "id": id_,
        "type": f"com.example.zürich.{text}",
        "source": f"urn:example:café:{text}",
        "subject": f"subj-1 ü {text}",
        "dataschema": f"urn:schema:größe:{text}",
        "datacontenttype": "application/json",
        "tenant": f"Zürich–Øst {text}",
        "partitionkey": f"customer-{id_[-1]}",
    }


def produce(brokers, topic, count, client, mode):
    to = to_binary_event if mode == "binary" else to_structured_event
    messages = []
    for i in range(int(count)):
        event = CloudEvent({**attributes(f"{client}-{mode}-{i}"), "time": TIME}, DATA)
        messages.append(to(event))
    if client == "confluent":
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": brokers})
        for m in messages:
            producer.produce(topic, value=m.value, key=m.key, headers=list(m.headers.items()))
        left = producer.flush(30)
        assert left == 0, f"{left} records not delivered"
    else:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=brokers, acks="all")
        for m in messages:
            key = m.key.encode() if isinstance(m.key, str) else m.key
            producer.send(topic, value=m.value, key=key, headers=list(m.headers.items()))
        producer.flush(30)
        producer.close()
    print(json.dumps({"produced": len(messages)}), flush=True)


def records(brokers, topic, count, client):
    """(headers, key, value) of `count` records, from the start of `topic`."""
    group = f"interop-{uuid.uuid4()}"
    out = []
    if client == "confluent":
        from confluent_kafka import Consumer

        consumer = Consumer(
            {"bootstrap.servers": brokers, "group.id": group, "auto.offset.reset": "earliest"}
        )
        consumer.subscribe([topic])
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
        while len(out) < count and datetime.datetime.now() < deadline:
            m = consumer.poll(1.0)
            if m is None or m.error():
                continue
            out.append((dict(m.headers() or []), m.key(), m.value()))
        consumer.close()
    else:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=brokers,
            group_id=group,
            auto_offset_reset="earliest",
            consumer_timeout_ms=60000,
        )
        for m in consumer:
            out.append((dict(m.headers or []), m.key, m.value))
            if len(out) == count:
                break
        consumer.close()
    return out


def consume(brokers, topic, count, client):
    count = int(count)
    failures = []
    seen = []
    for headers, key, value in records(brokers, topic, count, client):
        event = from_kafka_event(KafkaMessage(headers=headers, key=key, value=value or b""))
        got = event.get_attributes()
        id_ = got.get("id")
        seen.append(id_)
        for name, want in {**attributes(id_), "time": TIME}.items():
            if got.get(name) != want:
                failures.append(f"{id_}: {name} is {got.get(name)!r}, sent {want!r}")
        key_text = key.decode() if isinstance(key, bytes) else key
        if key_text != attributes(id_)["partitionkey"]:
            failures.append(f"{id_}: the record key is {key!r}")
        if event.get_data() != DATA:
            failures.append(f"{id_}: data is {event.get_data()!r}")
    report = {"events": len(seen), "ids": sorted(seen), "failures": failures}
    print(json.dumps(report, ensure_ascii=False), flush=True)
    sys.exit(1 if failures or len(seen) != count else 0)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"produce": produce, "consume": consume}[command](*args)
