// Builds gate.js into a component with componentize-js (StarlingMonkey).
// Usage: node build.mjs OUT.wasm   (run from this directory, after `npm ci`)
import { componentize } from "@bytecodealliance/componentize-js";
import { cp, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const out = resolve(process.argv[2] ?? "js_gate.wasm");
// componentize-js reads the WIT through a sandbox that sees relative paths
// only, so give it a private copy next to the source.
const work = await mkdtemp(join(tmpdir(), "js-gate-"));
await cp("gate.js", join(work, "gate.js"));
await cp("../../wit", join(work, "wit"), { recursive: true });
process.chdir(work);
const { component } = await componentize({
  sourcePath: "gate.js",
  witPath: "wit",
  worldName: "plugin",
  // No clocks, randomness, stdio or HTTP: the host does not grant them anyway.
  disableFeatures: ["random", "stdio", "clocks", "http", "fetch-event"],
});
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes`);
