// Validates an AsyncAPI document with the AsyncAPI parser (@asyncapi/parser) and prints what it
// found as one JSON object on stdout: the diagnostics by severity, and the channels,
// operations and messages of the parsed document (so the caller can check that the parser
// read the same document it was given). Each message's examples are also validated against its
// payload and headers schemas with Ajv (JSON Schema draft 07, formats checked), since the
// parser's rules do not do that for AsyncAPI 3. Exits 1 when the parser reports an error or cannot
// build a document, 0 otherwise.
//
// Usage: node check.mjs <document.json>
import { readFile } from 'node:fs/promises';
import { Parser } from '@asyncapi/parser';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';

const SEVERITY = ['error', 'warning', 'info', 'hint'];

const path = process.argv[2];
if (!path) {
  console.error('usage: node check.mjs <document.json>');
  process.exit(2);
}
const text = await readFile(path, 'utf8');
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text, { source: path });

const found = { error: [], warning: [], info: [], hint: [] };
for (const d of diagnostics) {
  found[SEVERITY[d.severity] ?? 'error'].push({
    code: d.code,
    message: d.message,
    path: d.path.join('/'),
  });
}
const out = { diagnostics: found, parsed: document !== undefined };
if (document) {
  out.version = document.version();
  out.channels = document.channels().all().map((c) => ({
    id: c.id(),
    address: c.address(),
    amqp: c.bindings().get('amqp')?.value() ?? null,
    messages: c.messages().all().map((m) => m.id()),
  }));
  out.operations = document.operations().all().map((o) => ({
    id: o.id(),
    action: o.action(),
    channels: o.channels().all().map((c) => c.id()),
    messages: o.messages().all().map((m) => m.id()),
  }));
  const ajv = new Ajv({ allErrors: true, strict: false });
  addFormats(ajv);
  for (const m of document.components().messages().all()) {
    for (const example of m.examples().all()) {
      const parts = [
        ['payload', m.hasPayload() ? m.payload().json() : undefined, example.payload()],
        ['headers', m.hasHeaders() ? m.headers().json() : undefined, example.headers()],
      ];
      for (const [part, schema, value] of parts) {
        if (schema === undefined || value === undefined) continue;
        const validate = ajv.compile(schema);
        if (!validate(value)) {
          found.error.push({
            code: 'warren-example-does-not-fit',
            message: `${m.id()} example ${example.name() ?? ''}: ${part}: ${ajv.errorsText(validate.errors)}`,
            path: `components/messages/${m.id()}/examples`,
          });
        }
      }
    }
  }
  out.messages = document.components().messages().all().map((m) => ({
    id: m.id(),
    headers: m.hasHeaders() ? Object.keys(m.headers().properties() ?? {}) : [],
  }));
}
console.log(JSON.stringify(out));
process.exit(found.error.length > 0 || !document ? 1 : 0);
