// The CloudEvents JavaScript SDK (npm `cloudevents`) with its defaults, as
// its README shows them: events sent by `emitterFor(httpTransport(url))` in
// binary mode (the default) and structured mode, and read back from the
// channel's server-sent events with the SDK's own HTTP binding. Every String
// attribute (id, type, subject, datacontenttype) and extension holds
// non-ASCII text (source and dataschema are URI references, which the SDK
// keeps to ASCII); the SDK puts binary-mode
// values raw into headers, which Node sends as ISO-8859-1, so the text is in
// that range.
//
//   node ce_sdk.cjs URL APP CHANNEL [N]   prints a JSON report; exits 1 on
//                                         any difference
"use strict";
const http = require("http");
const { CloudEvent, HTTP, Mode, emitterFor, httpTransport } = require("cloudevents");

const [url, app, channel, countArg] = process.argv.slice(2);
const count = Number(countArg || 20);
const target = `${url}/v1/apps/${app}/channels/${channel}`;
const DATA = "grüße";

function attributes(id) {
  const text = "crème ÿ";
  return {
    id: `${id}-${text}`,
    type: `com.example.zürich.${text}`,
    // The SDK takes only ASCII URI references (its own validation).
    source: "urn:example:cafe",
    subject: `subj-1 ü ${text}`,
    dataschema: "urn:schema:size",
    datacontenttype: "text/plain; charset=utf-8; note=dé",
    time: "2026-11-25T10:00:00.000Z",
    tenant: `Zürich Øst ${text}`,
    region: `ñ-${text}`,
  };
}

// Follows the channel; resolves with the events once `count` have come.
function follow() {
  return new Promise((resolve, reject) => {
    const events = [];
    let opened;
    const ready = new Promise((r) => (opened = r));
    const req = http.get(target, (res) => {
      if (res.statusCode !== 200) reject(new Error(`watch answered ${res.statusCode}`));
      res.setEncoding("utf-8");
      let buffered = "";
      res.on("data", (chunk) => {
        buffered += chunk;
        let end;
        while ((end = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, end);
          buffered = buffered.slice(end + 1);
          if (line.startsWith(":")) opened();
          if (!line.startsWith("data:")) continue;
          const body = line.slice("data:".length).trim();
          events.push(HTTP.toEvent({ headers: { "content-type": "application/cloudevents+json" }, body }));
          if (events.length === count) {
            req.destroy();
            resolve(events);
          }
        }
      });
    });
    req.on("error", (e) => events.length < count && reject(e));
    setTimeout(() => reject(new Error(`${events.length} of ${count} events came back`)), 30000).unref();
    follow.ready = ready;
  });
}

async function main() {
  const received = follow();
  await follow.ready;
  const emitters = {
    binary: emitterFor(httpTransport(target)),
    structured: emitterFor(httpTransport(target), { mode: Mode.STRUCTURED }),
  };
  const failures = [];
  const sent = new Map();
  for (let n = 0; n < count; n++) {
    const mode = n % 2 ? "structured" : "binary";
    const attrs = attributes(`js-${mode}-${n}`);
    const answer = await emitters[mode](new CloudEvent({ ...attrs, data: DATA }));
    const body = JSON.parse(answer.body);
    if (body.id !== attrs.id) failures.push(`${attrs.id}: the endpoint answered ${answer.body}`);
    sent.set(attrs.id, attrs);
  }
  const events = await received;
  const got = new Map(events.map((e) => [e.id, e]));
  for (const [id, attrs] of sent) {
    const event = got.get(id);
    if (!event) {
      failures.push(`${id} did not come back`);
      continue;
    }
    for (const [name, want] of Object.entries(attrs)) {
      if (event[name] !== want) failures.push(`${id}: ${name} is ${JSON.stringify(event[name])}, sent ${JSON.stringify(want)}`);
    }
    if (event.data !== DATA) failures.push(`${id}: data is ${JSON.stringify(event.data)}`);
  }
  console.log(JSON.stringify({ sent: sent.size, events: events.length, failures }));
  process.exit(failures.length ? 1 : 0);
}

main().catch((e) => {
  console.log(JSON.stringify({ error: String(e) }));
  process.exit(1);
});
