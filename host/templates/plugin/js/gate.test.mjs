// Calls build/{{name}}.wasm the way the operator does (`disagg plugin run`)
// with the requests in test/. Run with `npm test` (it builds first); set
// DISAGG to use a disagg that is not on PATH.
import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import test from "node:test";

function run(request) {
  const out = execFileSync(
    process.env.DISAGG ?? "disagg",
    ["plugin", "run", "build/{{name}}.wasm", "--hook", "gate-step", "--request", `test/${request}.json`],
    { encoding: "utf8" },
  );
  return JSON.parse(out).answer;
}

test("holds a step nobody approved", () => {
  const answer = run("held");
  assert.match(answer.hold?.reason ?? "", /step 2 of 4/);
});

test("proceeds once the step is approved", () => {
  assert.equal(run("approved"), "proceed");
});
