"""The CloudEvents Python SDK with its defaults, as its documentation shows
them: events made by the SDK, posted with `requests` (binary and structured
mode, the current API and the legacy `cloudevents.v1` one), and the channel
followed with `requests` too (server-sent events, decoded as the response's
charset says). Every string attribute and extension holds non-ASCII text.

The current API percent-encodes header values, so any text goes; the legacy
API puts values raw into headers, which `requests` sends as ISO-8859-1, so
its text is in that range.

  round-trip URL APP CHANNEL [N]   follows the channel, posts N events (20)
                                   in the four ways in turn, reads them back
                                   and compares every attribute and the
                                   data; prints a JSON report, exits 1 on
                                   any difference
"""
import datetime
import json
import sys
import threading
import warnings

import requests
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

warnings.simplefilter("ignore")
from cloudevents.v1.http import CloudEvent as LegacyEvent  # noqa: E402
from cloudevents.v1.http import to_binary, to_structured  # noqa: E402

TIME = datetime.datetime(2026, 11, 25, 10, 0, tzinfo=datetime.timezone.utc)
DATA = "grüße"


def attributes(id_, text):
    """Every string attribute and two extensions, each with `text` in it."""
    return {
        "specversion": "1.0",
        "id": f"{id_}-{text}",
        "type": f"com.example.zürich.{text}",
        "source": f"urn:example:café:{text}",
        "subject": f"subj-1 ü {text}",
        "dataschema": f"urn:schema:größe:{text}",
        "datacontenttype": "text/plain; charset=utf-8; note=dé",
        "tenant": f"Zürich Øst {text}",
        "region": f"ñ-{text}",
    }


def current(mode, id_):
    attrs = attributes(id_, "crème ✓ 日本語 🎉")
    event = CloudEvent({**attrs, "time": TIME}, DATA)
    message = (to_binary_event if mode == "binary" else to_structured_event)(event)
    return attrs, message.headers, message.body


def legacy(mode, id_):
    attrs = attributes(id_, "crème ÿ")
    # The legacy API JSON-encodes text data whatever its content type;
    # bytes go as they are.
    event = LegacyEvent({**attrs, "time": TIME.isoformat()}, DATA.encode())
    headers, body = (to_binary if mode == "binary" else to_structured)(event)
    return attrs, headers, body


WAYS = [
    ("current-binary", lambda i: current("binary", i)),
    ("current-structured", lambda i: current("structured", i)),
    ("legacy-binary", lambda i: legacy("binary", i)),
    ("legacy-structured", lambda i: legacy("structured", i)),
]


def round_trip(url, app, channel, count="20"):
    count = int(count)
    target = f"{url}/v1/apps/{app}/channels/{channel}"
    watch = requests.get(target, stream=True, timeout=30)
    assert watch.status_code == 200, watch.status_code
    lines = watch.iter_lines(decode_unicode=True)
    assert next(lines).startswith(":"), "the watch opens with a comment"

    received = []

    def follow():
        for line in lines:
            if line.startswith("data:"):
                received.append(json.loads(line[len("data:"):]))
                if len(received) == count:
                    return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()

    sent = {}
    failures = []
    for n in range(count):
        way, make = WAYS[n % len(WAYS)]
        attrs, headers, body = make(f"{way}-{n}")
        answer = requests.post(target, data=body, headers=headers, timeout=30)
        if answer.status_code != 202:
            failures.append(f"{way}-{n}: the endpoint answered {answer.status_code}: {answer.text}")
            continue
        sent[attrs["id"]] = attrs

    follower.join(timeout=30)
    got = {doc.get("id"): doc for doc in received}
    for id_, attrs in sent.items():
        doc = got.get(id_)
        if doc is None:
            failures.append(f"{id_!r} did not come back")
            continue
        for name, want in {**attrs, "time": "2026-11-25T10:00:00Z"}.items():
            have = doc.get(name)
            if name == "time" and isinstance(have, str):
                have = have.replace("+00:00", "Z")
            if have != want:
                failures.append(f"{id_!r}: {name} is {have!r}, sent {want!r}")
        if doc.get("data") != DATA:
            failures.append(f"{id_!r}: data is {doc.get('data')!r}")
    print(json.dumps({"sent": len(sent), "events": len(received), "failures": failures}, ensure_ascii=False), flush=True)
    sys.exit(1 if failures or len(received) != count else 0)


if __name__ == "__main__":
    round_trip(*sys.argv[2:]) if sys.argv[1] == "round-trip" else sys.exit("unknown command")
