#!/usr/bin/env python3
"""Regenerates crates/api/schema/lws-fragments.json from the upstream LWS CRD.

The pod-template and volume-claim-template schemas are taken verbatim from the
upstream LeaderWorkerSet CRD so that our CRD accepts exactly what upstream
accepts there, including pod fields newer than our Rust dependencies know.
A test (host/tests/crd.rs) fails when this file drifts from upstream.

Usage: python3 scripts/vendor-lws-schema.py [../shared/upstream/leaderworkerset.x-k8s.io_leaderworkersets.yaml]
Needs PyYAML (pip install pyyaml).
"""
import json, os, sys
import yaml

here = os.path.dirname(os.path.abspath(__file__))
src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "../../shared/upstream/leaderworkerset.x-k8s.io_leaderworkersets.yaml")
crd = yaml.safe_load(open(src))
lwt = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["leaderWorkerTemplate"]["properties"]
def strip_top(s):
    s = dict(s)
    s.pop("description", None)
    return s
out = {
    "podTemplate": strip_top(lwt["workerTemplate"]),
    "persistentVolumeClaim": strip_top(lwt["volumeClaimTemplates"]["items"]),
}
assert strip_top(lwt["leaderTemplate"]) == out["podTemplate"], "leader and worker template schemas differ upstream"
with open(os.path.join(here, "../crates/api/schema/lws-fragments.json"), "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
    f.write("\n")
