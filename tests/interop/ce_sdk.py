"""The CloudEvents Python SDK against the HTTP endpoint: a round trip of
events with non-ASCII attributes, in binary and structured mode, with the
SDK's current API (`cloudevents.core`, which percent-encodes header values)
and its legacy one (`cloudevents.v1`, which sends them as raw UTF-8).

  round-trip URL APP CHANNEL   watches the channel, posts the four events,
                               reads them back with the SDK and compares
                               every attribute and the data; exits 1 on any
                               difference
"""
import datetime
import http.client
import json
import sys
import urllib.parse
import warnings

import cloudevents.core.bindings.http as core_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

warnings.simplefilter("ignore")
from cloudevents.v1.http import CloudEvent as LegacyEvent  # noqa: E402
from cloudevents.v1.http import to_binary as legacy_binary  # noqa: E402
from cloudevents.v1.http import to_structured as legacy_structured  # noqa: E402

ATTRIBUTES = {
    "specversion": "1.0",
    "type": "com.example.zürich",
    "source": "urn:example:café",
    "subject": "crème brûlée ✓ 日本語 🎉",
    "tenant": "Zürich–Øst",
    "datacontenttype": "text/plain; charset=utf-8",
}
DATA = "grüße"
TIME = datetime.datetime(2026, 11, 25, 10, 0, tzinfo=datetime.timezone.utc)


def messages():
    for mode, to in [("binary", core_http.to_binary), ("structured", core_http.to_structured)]:
        event = CloudEvent({**ATTRIBUTES, "id": f"core-{mode}", "time": TIME}, DATA)
        message = to(event, JSONFormat())
        yield f"core-{mode}", message.headers, message.body
    for mode, to in [("binary", legacy_binary), ("structured", legacy_structured)]:
        # The legacy API JSON-encodes text data whatever its content type;
        # bytes go as they are.
        event = LegacyEvent({**ATTRIBUTES, "id": f"legacy-{mode}", "time": TIME.isoformat()}, DATA.encode())
        headers, body = to(event)
        yield f"legacy-{mode}", headers, body


def round_trip(url, app, channel):
    target = urllib.parse.urlsplit(url)
    path = f"/v1/apps/{app}/channels/{channel}"
    watch = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    watch.request("GET", path)
    stream = watch.getresponse()
    assert stream.status == 200, stream.status
    assert stream.readline().startswith(b":"), "the watch opens with a comment"

    sent = {}
    for id_, headers, body in messages():
        post = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        # Header values go as the SDK made them; UTF-8 where they are not ASCII.
        post.request("POST", path, body=body, headers={k: v.encode() for k, v in headers.items()})
        answer = post.getresponse()
        text = answer.read().decode()
        if answer.status != 202:
            sys.exit(f"{id_}: the endpoint answered {answer.status}: {text}")
        sent[id_] = True

    failures = []
    got = 0
    while got < len(sent):
        line = stream.readline()
        if not line.startswith(b"data:"):
            continue
        got += 1
        doc = line[len(b"data:"):].strip()
        event = core_http.from_structured(
            core_http.HTTPMessage(headers={"content-type": "application/cloudevents+json"}, body=doc),
            JSONFormat(),
        )
        attributes = event.get_attributes()
        for name, want in {**ATTRIBUTES, "time": TIME}.items():
            have = attributes.get(name)
            if have != want:
                failures.append(f"{attributes.get('id')}: {name} is {have!r}, sent {want!r}")
        data = event.get_data()
        data = data.decode() if isinstance(data, bytes) else data
        if data != DATA:
            failures.append(f"{attributes.get('id')}: data is {data!r}")
    print(json.dumps({"events": got, "failures": failures}), flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    round_trip(*sys.argv[2:]) if sys.argv[1] == "round-trip" else sys.exit("unknown command")
