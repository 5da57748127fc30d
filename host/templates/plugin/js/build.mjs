// Builds gate.js into the component build/{{name}}.wasm with componentize-js.
// Usage: npm run build   (after npm install)
import { componentize } from "@bytecodealliance/componentize-js";
import { mkdir, writeFile } from "node:fs/promises";

const out = "build/{{name}}.wasm";
const { component } = await componentize({
  sourcePath: "gate.js",
  witPath: "wit",
  worldName: "plugin",
  // No clocks, randomness, stdio or HTTP: the host does not grant them anyway.
  disableFeatures: ["random", "stdio", "clocks", "http", "fetch-event"],
});
await mkdir("build", { recursive: true });
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes`);
