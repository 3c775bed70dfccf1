// The relay in JavaScript (componentize-js): each order event from the
// `orders` queue becomes a "shipped" event on the `shipments` topic, exactly
// as the Rust relay (../relay) makes it. An order without data is refused, so
// the provider retries it and then dead-letters it to `rejected`.
import { publish } from 'wasi:messaging/pub@0.1.0-draft';

// An exported function's error is thrown as the WIT variant it returns.
const fail = (tag, val) => ({ tag, val });

// serde_json writes object keys sorted (the Rust relay's output), so this does too.
const sorted = (value) => {
  if (Array.isArray(value)) return value.map(sorted);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sorted(value[k])]));
  }
  return value;
};

export const handler = {
  onReceive(order) {
    if (order.data === undefined) {
      throw fail('unsupported-message-format', `order ${order.id} has no data`);
    }
    // JSON data is kept as JSON; anything else travels as a string.
    const text = new TextDecoder().decode(order.data);
    let original;
    try {
      original = JSON.parse(text);
    } catch {
      original = text;
    }
    const shipped = JSON.stringify(sorted({ order: original, status: 'shipped' }));
    const event = {
      specversion: '1.0',
      ty: 'com.example.order.shipped',
      source: 'urn:sample-apps:relay',
      id: `${order.id}-shipped`,
      data: new TextEncoder().encode(shipped),
      datacontenttype: 'application/json',
      dataschema: undefined,
      subject: order.subject,
      time: order.time,
      extensions: [...(order.extensions ?? []), ['relayedfrom', order.id]],
    };
    publish({ tag: 'topic', val: 'shipments' }, event);
    console.log(`order ${order.id} shipped as ${event.id}`);
  },
};
