// Builds app.js into a component with componentize-js and its default
// features, for the `relay` world of ../wit (the messaging `service` world
// alone). `jco componentize` is not used: its 1.35 release fails on a
// file-access check before it starts.
//
//   npm install && node build.mjs [out.wasm]
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? resolve(here, '../../target/wasm/relay-js.wasm'));
const { component } = await componentize({
  sourcePath: resolve(here, 'app.js'),
  witPath: resolve(here, '../wit'),
  worldName: 'relay',
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
console.log(`wrote ${out} (${component.length} bytes)`);
