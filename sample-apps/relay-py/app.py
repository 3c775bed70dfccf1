"""The relay in Python (componentize-py): each order event from the `orders`
queue becomes a "shipped" event on the `shipments` topic, exactly as the Rust
relay (`../relay`) makes it. An order without data is refused, so the
provider retries it and then dead-letters it to `rejected`.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import pub, types


class Handler(exports.Handler):
    def on_receive(self, order: types.Event) -> None:
        if order.data is None:
            raise Err(types.MessagingError_UnsupportedMessageFormat(f"order {order.id} has no data"))
        # JSON data is kept as JSON; anything else travels as a string.
        try:
            original = json.loads(order.data)
        except ValueError:
            original = order.data.decode("utf-8", "replace")
        # Written as serde_json writes it: compact, keys sorted, UTF-8 as is.
        shipped = json.dumps(
            {"order": original, "status": "shipped"},
            separators=(",", ":"),
            ensure_ascii=False,
            sort_keys=True,
        )
        extensions = list(order.extensions or [])
        extensions.append(("relayedfrom", order.id))
        event = types.Event(
            specversion="1.0",
            ty="com.example.order.shipped",
            source="urn:sample-apps:relay",
            id=f"{order.id}-shipped",
            data=shipped.encode(),
            datacontenttype="application/json",
            dataschema=None,
            subject=order.subject,
            time=order.time,
            extensions=extensions,
        )
        pub.publish(types.Channel_Topic("shipments"), event)
        print(f"order {order.id} shipped as {event.id}")
