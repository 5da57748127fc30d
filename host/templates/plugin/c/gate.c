// {{name}}: a rollout gate. It holds step k of a rollout until the set carries
// the annotation `example.com/approved-step` with a number >= k, so someone
// approves each step with
// `kubectl annotate dset NAME example.com/approved-step=k --overwrite`.
// Change the gate_step function to decide what you need.
//
// Bindings come from `wit-bindgen c wit/ --world plugin` (build.sh); strings
// are (pointer, length) pairs, not NUL-terminated.

#include "plugin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char ANNOTATION[] = "example.com/approved-step";

static bool string_is(const plugin_string_t *s, const char *text) {
    size_t n = strlen(text);
    return s->len == n && memcmp(s->ptr, text, n) == 0;
}

// The approved step in the annotation, or 0 when it is missing or not a number.
static unsigned long approved_step(const exports_disaggregatedset_plugin_hooks_gate_request_t *req) {
    for (size_t i = 0; i < req->annotations.len; i++) {
        const plugin_tuple2_string_string_t *a = &req->annotations.ptr[i];
        if (!string_is(&a->f0, ANNOTATION) || a->f1.len == 0) continue;
        unsigned long value = 0;
        for (size_t j = 0; j < a->f1.len; j++) {
            char c = (char)a->f1.ptr[j];
            if (c < '0' || c > '9') return 0;
            value = value * 10 + (unsigned long)(c - '0');
        }
        return value;
    }
    return 0;
}

bool exports_disaggregatedset_plugin_hooks_gate_step(exports_disaggregatedset_plugin_hooks_gate_request_t *req,
                                                     exports_disaggregatedset_plugin_hooks_gate_decision_t *ret,
                                                     plugin_string_t *err) {
    (void)err;
    if (approved_step(req) >= req->step) {
        ret->tag = DISAGGREGATEDSET_PLUGIN_TYPES_GATE_DECISION_PROCEED;
    } else {
        char reason[128];
        snprintf(reason, sizeof reason, "step %u of %u waits for %s >= %u", (unsigned)req->step,
                 (unsigned)req->total_steps, ANNOTATION, (unsigned)req->step);
        ret->tag = DISAGGREGATEDSET_PLUGIN_TYPES_GATE_DECISION_HOLD;
        plugin_string_dup(&ret->val.hold.reason, reason);
        ret->val.hold.recheck_after_ms = 10000;  // ask again in 10 s
    }
    exports_disaggregatedset_plugin_hooks_gate_request_free(req);
    return true;
}

void exports_disaggregatedset_plugin_hooks_describe(exports_disaggregatedset_plugin_hooks_plugin_info_t *ret) {
    plugin_string_dup(&ret->name, "{{name}}");
    plugin_string_dup(&ret->version, "0.1.0");
    ret->hooks.len = 1;
    ret->hooks.ptr = malloc(sizeof *ret->hooks.ptr);
    ret->hooks.ptr[0] = DISAGGREGATEDSET_PLUGIN_TYPES_HOOK_GATE_STEP;
}

// Hooks this plugin does not implement: describe does not list them, so the host never calls them.

bool exports_disaggregatedset_plugin_hooks_patch_role(exports_disaggregatedset_plugin_hooks_patch_request_t *req,
                                                      exports_disaggregatedset_plugin_hooks_patch_t *ret,
                                                      plugin_string_t *err) {
    (void)err;
    exports_disaggregatedset_plugin_hooks_patch_request_free(req);
    ret->tag = DISAGGREGATEDSET_PLUGIN_TYPES_PATCH_NONE;
    return true;
}

bool exports_disaggregatedset_plugin_hooks_scale_role(exports_disaggregatedset_plugin_hooks_scale_request_t *req,
                                                      exports_disaggregatedset_plugin_hooks_option_scale_advice_t *ret,
                                                      plugin_string_t *err) {
    (void)err;
    exports_disaggregatedset_plugin_hooks_scale_request_free(req);
    ret->is_some = false;
    return true;
}

void exports_disaggregatedset_plugin_hooks_validate(exports_disaggregatedset_plugin_hooks_validate_request_t *req,
                                                    exports_disaggregatedset_plugin_hooks_list_violation_t *ret) {
    exports_disaggregatedset_plugin_hooks_validate_request_free(req);
    ret->ptr = NULL;
    ret->len = 0;
}
