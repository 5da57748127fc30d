// The custom rollout gate of examples/rust-gate, in JavaScript (see README.md):
// hold while a role's new groups are not ready, hold a step that would add
// more than `maxNewPerStep` groups to a role, and hold the final step until
// the set carries the annotation `example.com/final-step: go`.

function hold(reason, recheckAfterMs) {
  return { tag: "hold", val: { reason, recheckAfterMs: BigInt(recheckAfterMs) } };
}

export const hooks = {
  describe() {
    return { name: "js-gate", version: "0.1.0", hooks: ["gate-step"] };
  },

  gateStep(req) {
    const notReady = req.roles.find((r) => !r.ready);
    if (notReady) return hold(`${notReady.name} not ready`, 5000);

    const config = JSON.parse(req.config);
    const maxNew = config.maxNewPerStep ?? 4;
    const big = req.roles.find((r) => r.newNext - r.newNow > maxNew);
    if (big) return hold(`${big.name} would add more than ${maxNew} groups`, 60000);

    const finalStep = req.step >= req.totalSteps;
    const go = req.annotations.some(([k, v]) => k === "example.com/final-step" && v === "go");
    if (finalStep && !go) return hold("final step needs example.com/final-step: go", 10000);

    return { tag: "proceed" };
  },

  // Hooks this plugin does not implement (describe does not list them; the host never calls them).
  patchRole() {
    return { tag: "none" };
  },
  scaleRole() {
    return undefined;
  },
  validate() {
    return [];
  },
};
