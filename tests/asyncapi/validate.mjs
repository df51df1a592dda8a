// Validates an AsyncAPI document with the official parser (@asyncapi/parser):
// prints every diagnostic (errors and warnings; infos and hints with
// --verbose) and exits 1 when there is any error, 2 on a usage or I/O error.
//
//   node tests/asyncapi/validate.mjs <file.json|file.yaml> [--verbose]
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { Parser, DiagnosticSeverity } = require('@asyncapi/parser');

const args = process.argv.slice(2);
const verbose = args.includes('--verbose');
const file = args.find((a) => !a.startsWith('--'));
if (!file) {
  console.error('usage: node validate.mjs <asyncapi document> [--verbose]');
  process.exit(2);
}

let text;
try {
  text = await readFile(file, 'utf8');
} catch (e) {
  console.error(`cannot read ${file}: ${e.message}`);
  process.exit(2);
}

const names = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text, { source: file });
let errors = 0;
for (const d of diagnostics) {
  if (d.severity === DiagnosticSeverity.Error) errors += 1;
  if (d.severity > DiagnosticSeverity.Warning && !verbose) continue;
  const at = d.path && d.path.length ? ` at /${d.path.join('/')}` : '';
  console.log(`${names[d.severity] ?? d.severity}: ${d.code}: ${d.message}${at}`);
}
if (errors > 0 || !document) {
  console.log(`${file}: INVALID (${errors} error(s))`);
  process.exit(1);
}
console.log(
  `${file}: valid AsyncAPI ${document.version()}: ` +
    `${document.channels().length} channels, ${document.operations().length} operations, ` +
    `${document.messages().length} messages`,
);
