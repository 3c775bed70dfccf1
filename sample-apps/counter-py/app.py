"""The counter in Python (componentize-py): for each visit on the `visits`
queue, asks the HTTP API named by the `api_url` variable for a quote, adds
one to the `visits` counter in the `default` key-value store, and publishes
both on the `counts` topic. The same app as `../counter` (Rust) and
`../counter-js` (JavaScript).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import (
    atomics,
    outgoing_handler,
    pub,
    streams,
    wasi_config_store as config,
    wasi_http_types as http,
    wasi_keyvalue_store as kv,
    wasi_messaging_types as messaging,
)


def get(url: str) -> str:
    """GET `url` over wasi:http, waiting for each step (no event loop needed)."""
    scheme, rest = url.split("://", 1)
    authority, slash, path = rest.partition("/")
    request = http.OutgoingRequest(http.Fields())
    request.set_method(http.Method_Get())
    request.set_scheme(http.Scheme_Https() if scheme == "https" else http.Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query(slash + path if slash else "/")
    pending = outgoing_handler.handle(request, None)
    with pending.subscribe() as ready:
        ready.block()
    answer = pending.get()
    if answer is None or isinstance(answer, Err) or isinstance(answer.value, Err):
        raise RuntimeError(f"GET {url}: {answer.value.value if answer else 'no response'}")
    response = answer.value.value
    if not 200 <= response.status() < 300:
        raise RuntimeError(f"GET {url}: status {response.status()}")
    body = response.consume()
    stream = body.stream()
    chunks = []
    while True:
        try:
            chunks.append(stream.blocking_read(64 * 1024))
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise RuntimeError(f"GET {url}: reading the body failed")
    # Child resources go before their parents.
    stream.__exit__(None, None, None)
    http.IncomingBody.finish(body)
    response.__exit__(None, None, None)
    return b"".join(chunks).decode("utf-8", "replace")


class Handler(exports.Handler):
    def on_receive(self, visit: messaging.Event) -> None:
        url = config.get("api_url")
        if url is None:
            raise Err(messaging.MessagingError_UnexpectedError("the variable `api_url` is not set"))
        try:
            quote = get(url)
        except (Err, RuntimeError) as e:
            # A failing API is worth another try: the provider retries the visit.
            raise Err(messaging.MessagingError_ServiceUnavailable(str(e)))
        try:
            visits = atomics.increment(kv.open("default"), "visits", 1)
        except Err as e:
            raise Err(messaging.MessagingError_UnexpectedError(f"key-value: {e.value}"))
        print(f"visit {visit.id} is number {visits}")
        counted = json.dumps({"visits": visits, "quote": quote.strip()})
        pub.publish(
            messaging.Channel_Topic("counts"),
            messaging.Event(
                specversion="1.0",
                ty="com.example.visit.counted",
                source="urn:sample-apps:counter-py",
                id=f"{visit.id}-counted",
                data=counted.encode(),
                datacontenttype="application/json",
                dataschema=None,
                subject=visit.subject,
                time=None,
                extensions=None,
            ),
        )
