// The custom rollout gate of examples/rust-gate, in C (see README.md):
// hold while a role's new groups are not ready, hold a step that would add
// more than `maxNewPerStep` groups to a role (config, default 4), and hold the
// final step until the set carries the annotation `example.com/final-step: go`.
//
// Bindings come from `wit-bindgen c wit/ --world plugin`; strings are
// (pointer, length) pairs, not NUL-terminated.

#include "plugin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef exports_disaggregatedset_plugin_hooks_gate_decision_t decision_t;

static bool string_is(const plugin_string_t *s, const char *text) {
    size_t n = strlen(text);
    return s->len == n && memcmp(s->ptr, text, n) == 0;
}

// Reads `"maxNewPerStep": <int>` from the config JSON; a plugin with more
// config would use a JSON library (cJSON and friends compile for wasm32 too).
static long max_new_per_step(const plugin_string_t *config) {
    static const char key[] = "\"maxNewPerStep\"";
    for (size_t i = 0; i + sizeof key - 1 <= config->len; i++) {
        if (memcmp(config->ptr + i, key, sizeof key - 1) != 0) continue;
        size_t j = i + sizeof key - 1;
        while (j < config->len && (config->ptr[j] == ' ' || config->ptr[j] == ':')) j++;
        long value = 0;
        bool digits = false;
        while (j < config->len && config->ptr[j] >= '0' && config->ptr[j] <= '9') {
            value = value * 10 + (config->ptr[j++] - '0');
            digits = true;
        }
        if (digits) return value;
    }
    return 4;
}

static void hold(decision_t *ret, uint64_t recheck_ms, const char *fmt, const plugin_string_t *name, long n) {
    char reason[256];
    if (name) {
        snprintf(reason, sizeof reason, fmt, (int)name->len, (const char *)name->ptr, n);
    } else {
        snprintf(reason, sizeof reason, "%s", fmt);
    }
    ret->tag = DISAGGREGATEDSET_PLUGIN_TYPES_GATE_DECISION_HOLD;
    plugin_string_dup(&ret->val.hold.reason, reason);
    ret->val.hold.recheck_after_ms = recheck_ms;
}

bool exports_disaggregatedset_plugin_hooks_gate_step(exports_disaggregatedset_plugin_hooks_gate_request_t *req,
                                                     decision_t *ret, plugin_string_t *err) {
    (void)err;
    for (size_t i = 0; i < req->roles.len; i++) {
        const disaggregatedset_plugin_types_role_step_t *r = &req->roles.ptr[i];
        if (!r->ready) {
            hold(ret, 5000, "%.*s not ready", &r->name, 0);
            goto done;
        }
    }
    long max_new = max_new_per_step(&req->config);
    for (size_t i = 0; i < req->roles.len; i++) {
        const disaggregatedset_plugin_types_role_step_t *r = &req->roles.ptr[i];
        if ((long)r->new_next - (long)r->new_now > max_new) {
            hold(ret, 60000, "%.*s would add more than %ld groups", &r->name, max_new);
            goto done;
        }
    }
    if (req->step >= req->total_steps) {
        bool go = false;
        for (size_t i = 0; i < req->annotations.len; i++) {
            const plugin_tuple2_string_string_t *a = &req->annotations.ptr[i];
            go |= string_is(&a->f0, "example.com/final-step") && string_is(&a->f1, "go");
        }
        if (!go) {
            hold(ret, 10000, "final step needs example.com/final-step: go", NULL, 0);
            goto done;
        }
    }
    ret->tag = DISAGGREGATEDSET_PLUGIN_TYPES_GATE_DECISION_PROCEED;
done:
    exports_disaggregatedset_plugin_hooks_gate_request_free(req);
    return true;
}

void exports_disaggregatedset_plugin_hooks_describe(exports_disaggregatedset_plugin_hooks_plugin_info_t *ret) {
    plugin_string_dup(&ret->name, "c-gate");
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
