// The counter in JavaScript (componentize-js): for each visit on the
// `visits` queue, asks the HTTP API named by the `api_url` variable for a
// quote (with fetch()), adds one to the `visits` counter in the `default`
// key-value store, and publishes both on the `counts` topic. The same app as
// ../counter (Rust) and ../counter-py (Python).
import { publish } from 'wasi:messaging/pub@0.1.0-draft';
import { get as variable } from 'wasi:config/store@0.2.0-draft-2024-09-27';
import { open } from 'wasi:keyvalue/store@0.2.0-draft2';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft2';

// An exported function's error is thrown as the WIT variant it returns.
const fail = (tag, val) => ({ tag, val });

export const handler = {
  async onReceive(visit) {
    const url = variable('api_url');
    if (url === undefined) {
      throw fail('unexpected-error', 'the variable `api_url` is not set');
    }
    let quote;
    try {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`status ${response.status}`);
      quote = (await response.text()).trim();
    } catch (e) {
      // A failing API is worth another try: the provider retries the visit.
      throw fail('service-unavailable', `GET ${url}: ${e}`);
    }
    let visits;
    try {
      visits = increment(open('default'), 'visits', 1n);
    } catch (e) {
      throw fail('unexpected-error', `key-value: ${JSON.stringify(e.payload ?? String(e))}`);
    }
    console.log(`visit ${visit.id} is number ${visits}`);
    publish(
      { tag: 'topic', val: 'counts' },
      {
        specversion: '1.0',
        ty: 'com.example.visit.counted',
        source: 'urn:sample-apps:counter-js',
        id: `${visit.id}-counted`,
        data: new TextEncoder().encode(JSON.stringify({ visits: Number(visits), quote })),
        datacontenttype: 'application/json',
        dataschema: undefined,
        subject: visit.subject,
        time: undefined,
        extensions: undefined,
      },
    );
  },
};
