// {{name}}: a rollout gate. It holds step k of a rollout until the set carries
// the annotation `example.com/approved-step` with a number >= k, so someone
// approves each step with
// `kubectl annotate dset NAME example.com/approved-step=k --overwrite`.
// Change gateStep to decide what you need.

const ANNOTATION = "example.com/approved-step";

export const hooks = {
  describe() {
    return { name: "{{name}}", version: "0.1.0", hooks: ["gate-step"] };
  },

  gateStep(req) {
    const value = req.annotations.find(([k]) => k === ANNOTATION)?.[1] ?? "";
    const approved = /^[0-9]+$/.test(value) ? Number(value) : 0;
    if (approved >= req.step) return { tag: "proceed" };
    return {
      tag: "hold",
      val: {
        reason: `step ${req.step} of ${req.totalSteps} waits for ${ANNOTATION} >= ${req.step}`,
        recheckAfterMs: 10000n, // ask again in 10 s
      },
    };
  },

  // Hooks this plugin does not implement: describe does not list them, so the host never calls them.
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
