// Copies the dashboard's sources and the vendored htmx into ../static/.
// The output is committed, so `make run` needs no Node.js; run `make frontend` after editing.
import { cpSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "static");
const copies = [
  ["src/css/app.css", "css/app.css"],
  ["src/js/app.js", "js/app.js"],
  ["src/js/passkeys.js", "js/passkeys.js"],
  ["src/img/favicon.svg", "img/favicon.svg"],
  ["node_modules/htmx.org/dist/htmx.min.js", "vendor/htmx.min.js"],
  ["node_modules/htmx.org/LICENSE", "vendor/htmx.LICENSE"],
];
for (const [from, to] of copies) {
  mkdirSync(dirname(join(out, to)), { recursive: true });
  cpSync(join(here, from), join(out, to));
  console.log(`static/${to}`);
}
