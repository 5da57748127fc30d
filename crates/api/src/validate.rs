//! Operator-side validation of a set (`docs/api.md`). The CRD schema and its CEL
//! rule catch most of this at the API server; the operator checks again, so a
//! set that slipped past (an older CRD, a server without CEL) is reported as
//! `Valid=False` instead of acted upon. Every message names the field.

use super::limits::{MAX_REPLICAS, MAX_SLICES};
use super::lws::RollingUpdateConfiguration;
use super::set::{DisaggregatedSet, PlacementType, PluginBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeSet;
use std::fmt;

/// One problem with a set: the field path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn violation(field: impl Into<String>, message: impl Into<String>) -> Violation {
    Violation {
        field: field.into(),
        message: message.into(),
    }
}

/// Longest Kubernetes object name that is also a DNS-1035 label.
pub const MAX_NAME: usize = 63;
/// Length of the revision part of a child's name.
pub const REVISION_LEN: usize = 8;

/// Checks a set. An empty list means valid.
pub fn validate(set: &DisaggregatedSet) -> Vec<Violation> {
    let mut out = Vec::new();
    let spec = &set.spec;
    let set_name = set.metadata.name.as_deref().unwrap_or_default();

    if !is_dns1035_label(set_name) {
        out.push(violation(
            "metadata.name",
            format!("{set_name:?} must be a DNS-1035 label: at most 63 lowercase letters, digits or '-', starting with a letter and ending with a letter or digit"),
        ));
    }
    if !(2..=10).contains(&spec.roles.len()) {
        out.push(violation(
            "spec.roles",
            format!("must have 2 to 10 roles, has {}", spec.roles.len()),
        ));
    }
    if !(1..=MAX_SLICES).contains(&spec.slices) {
        out.push(violation(
            "spec.slices",
            format!("must be between 1 and {MAX_SLICES}, is {}", spec.slices),
        ));
    }

    let mut seen = BTreeSet::new();
    for (i, role) in spec.roles.iter().enumerate() {
        let at = format!("spec.roles[{i}]");
        if !is_dns1123_label(&role.name) {
            out.push(violation(
                format!("{at}.name"),
                format!("{:?} must be a DNS label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit", role.name),
            ));
        }
        if !seen.insert(role.name.as_str()) {
            out.push(violation(
                format!("{at}.name"),
                format!("duplicate role name {:?}", role.name),
            ));
        }
        // The widest child name is for the last slice.
        let child = child_name_len(set_name, spec.slices.max(1) - 1, &role.name);
        if child > MAX_NAME {
            out.push(violation(
                format!("{at}.name"),
                format!("child LeaderWorkerSet name <set>-<slice>-<rev8>-<role> would be {child} characters, over the limit of {MAX_NAME}; shorten the set or role name"),
            ));
        }
        let rs = &role.spec;
        let has_containers = rs
            .leader_worker_template
            .worker_template
            .0
            .get("spec")
            .and_then(|s| s.get("containers"))
            .and_then(|c| c.as_array())
            .is_some_and(|c| !c.is_empty());
        if !has_containers {
            out.push(violation(
                format!("{at}.spec.leaderWorkerTemplate.workerTemplate.spec.containers"),
                "required: a role needs a worker pod template with at least one container",
            ));
        }
        if !(0..=MAX_REPLICAS).contains(&rs.replicas) {
            out.push(violation(
                format!("{at}.spec.replicas"),
                format!("must be between 0 and {MAX_REPLICAS}, is {}", rs.replicas),
            ));
        }
        if rs.leader_worker_template.size < 1 {
            out.push(violation(
                format!("{at}.spec.leaderWorkerTemplate.size"),
                format!("must be at least 1, is {}", rs.leader_worker_template.size),
            ));
        }
        if let Some(cfg) = rs
            .rollout_strategy
            .as_ref()
            .and_then(|s| s.rolling_update_configuration.as_ref())
        {
            let at = format!("{at}.spec.rolloutStrategy.rollingUpdateConfiguration");
            if cfg.partition != 0 {
                out.push(violation(format!("{at}.partition"), "must be 0"));
            }
            match (
                parse_int_or_percent(&cfg.max_surge),
                parse_int_or_percent(&cfg.max_unavailable),
            ) {
                (Err(e), _) => out.push(violation(format!("{at}.maxSurge"), e)),
                (_, Err(e)) => out.push(violation(format!("{at}.maxUnavailable"), e)),
                (Ok(_), Ok(_)) => {
                    let (surge, unavailable) = absolute_budget(cfg, rs.replicas);
                    if surge == 0 && unavailable == 0 {
                        out.push(violation(
                            at,
                            format!("maxSurge and maxUnavailable must not both resolve to 0 (for {} replicas)", rs.replicas),
                        ));
                    }
                }
            }
        }
    }

    let fixed: Vec<i32> = spec
        .roles
        .iter()
        .filter(|r| !r.is_external())
        .map(|r| r.spec.replicas)
        .collect();
    if fixed.contains(&0) && fixed.iter().any(|r| *r > 0) {
        out.push(violation(
            "spec.roles",
            "replicas must be zero for all non-External roles (paused) or non-zero for all of them",
        ));
    }

    if let Some(p) = &spec.placement_policy
        && p.type_ != PlacementType::None
        && p.topology.as_deref().unwrap_or_default().is_empty()
    {
        out.push(violation(
            "spec.placementPolicy.topology",
            format!("required when type is {:?}", p.type_),
        ));
    }

    let role_names: BTreeSet<&str> = spec.roles.iter().map(|r| r.name.as_str()).collect();
    out.extend(start_order(spec, &role_names));
    out.extend(plugin_bindings(
        &spec.plugins,
        "spec.plugins",
        Some(&role_names),
    ));
    if let Some(s) = spec.progress_deadline_seconds
        && s < 1
    {
        out.push(violation(
            "spec.progressDeadlineSeconds",
            format!("must be at least 1, is {s}"),
        ));
    }
    out
}

/// `startAfter` names other roles of the set, and the order has no cycle.
fn start_order(spec: &crate::set::DisaggregatedSetSpec, names: &BTreeSet<&str>) -> Vec<Violation> {
    let mut out = Vec::new();
    for (i, role) in spec.roles.iter().enumerate() {
        for (j, after) in role.start_after.iter().enumerate() {
            let at = format!("spec.roles[{i}].startAfter[{j}]");
            if after == &role.name {
                out.push(violation(
                    at,
                    format!("role {} cannot start after itself", role.name),
                ));
            } else if !names.contains(after.as_str()) {
                out.push(violation(
                    at,
                    format!("{after:?} is not a role of this set"),
                ));
            }
        }
    }
    // Depth-first: a role reached again on its own path closes a cycle.
    fn visit<'a>(
        spec: &'a crate::set::DisaggregatedSetSpec,
        role: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(at) = path.iter().position(|r| *r == role) {
            let mut cycle = path[at..].to_vec();
            cycle.push(role);
            return Some(cycle);
        }
        if !done.insert(role) {
            return None;
        }
        path.push(role);
        let after = spec.roles.iter().find(|r| r.name == role)?;
        for next in &after.start_after {
            if next != role
                && let Some(cycle) = visit(spec, next, path, done)
            {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for role in &spec.roles {
        if let Some(cycle) = visit(spec, &role.name, &mut Vec::new(), &mut done) {
            out.push(violation(
                "spec.roles",
                format!("startAfter forms a cycle: {}", cycle.join(" → ")),
            ));
            break;
        }
    }
    out
}

/// `(maxSurge, maxUnavailable)` as absolute numbers: percentages of `target`,
/// surge rounded up and unavailability rounded down, each at most
/// `MAX_REPLICAS` (a larger budget means nothing more, and the planner adds
/// budgets to targets). Unparseable values count as 0 (`validate` reports them).
pub fn absolute_budget(cfg: &RollingUpdateConfiguration, target: i32) -> (i32, i32) {
    let abs = |v: &IntOrString, round_up: bool| match parse_int_or_percent(v) {
        Ok(IntOrPercent::Int(n)) => n,
        Ok(IntOrPercent::Percent(p)) => {
            let scaled = i64::from(p) * i64::from(target.max(0));
            let v = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            i32::try_from(v).unwrap_or(i32::MAX)
        }
        Err(_) => 0,
    };
    let abs = |v, up| abs(v, up).min(MAX_REPLICAS);
    (abs(&cfg.max_surge, true), abs(&cfg.max_unavailable, false))
}

enum IntOrPercent {
    Int(i32),
    Percent(i32),
}

fn parse_int_or_percent(v: &IntOrString) -> Result<IntOrPercent, String> {
    match v {
        IntOrString::Int(n) if (0..=MAX_REPLICAS).contains(n) => Ok(IntOrPercent::Int(*n)),
        IntOrString::Int(n) => Err(format!("must be between 0 and {MAX_REPLICAS}, is {n}")),
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i32>().ok())
            .filter(|p| *p >= 0)
            .map(IntOrPercent::Percent)
            .ok_or_else(|| {
                format!("{s:?} must be a non-negative integer or a percentage like \"25%\"")
            }),
    }
}

fn child_name_len(set: &str, slice: i32, role: &str) -> usize {
    set.len() + 1 + slice.to_string().len() + 1 + REVISION_LEN + 1 + role.len()
}

/// A DNS-1123 label: lowercase alphanumerics and '-', alphanumeric at both ends, ≤ 63.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// A DNS-1123 subdomain: dot-separated labels, ≤ 253.
/// Checks a list of plugin bindings: a set's `spec.plugins` (with its role
/// names) or the operator's default bindings (`roles` unchecked: a default
/// naming a role a set lacks simply does not apply to it).
/// The placeholders a signal query may use (`crate::set::SignalQuery`).
pub const SIGNAL_PLACEHOLDERS: [&str; 6] = [
    "set",
    "namespace",
    "slice",
    "role",
    "revision",
    "oldRevision",
];

/// Signal names unique and DNS-label-like, queries non-empty, at most 4 KiB,
/// and naming only known placeholders.
fn signal_queries(signals: &[crate::set::SignalQuery], at: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    if signals.len() > 16 {
        out.push(violation(
            at,
            format!("at most 16 signals, has {}", signals.len()),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, s) in signals.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if !is_dns1123_label(&s.name) {
            out.push(violation(
                format!("{at}.name"),
                format!(
                    "{:?} must be a DNS label (lowercase letters, digits, '-')",
                    s.name
                ),
            ));
        }
        if !names.insert(s.name.as_str()) {
            out.push(violation(
                format!("{at}.name"),
                format!("signal {:?} is declared twice", s.name),
            ));
        }
        if s.query.trim().is_empty() || s.query.len() > 4096 {
            out.push(violation(
                format!("{at}.query"),
                "must be 1 to 4096 bytes of PromQL",
            ));
        }
        let mut rest = s.query.as_str();
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                out.push(violation(
                    format!("{at}.query"),
                    "an unclosed {{ placeholder",
                ));
                break;
            };
            let name = after[..end].trim();
            if !SIGNAL_PLACEHOLDERS.contains(&name) {
                out.push(violation(
                    format!("{at}.query"),
                    format!(
                        "unknown placeholder {{{{{name}}}}}; known: {}",
                        SIGNAL_PLACEHOLDERS
                            .map(|p| format!("{{{{{p}}}}}"))
                            .join(", ")
                    ),
                ));
            }
            rest = &after[end + 2..];
        }
    }
    out
}

pub fn plugin_bindings(
    bindings: &[PluginBinding],
    at: &str,
    role_names: Option<&BTreeSet<&str>>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut plugin_names = BTreeSet::new();
    for (i, binding) in bindings.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if !is_dns1123_subdomain(&binding.name) {
            out.push(violation(
                format!("{at}.name"),
                format!(
                    "{:?} must be a ConfigMap name (DNS subdomain)",
                    binding.name
                ),
            ));
        }
        if !plugin_names.insert(binding.name.as_str()) {
            out.push(violation(
                format!("{at}.name"),
                format!("plugin {:?} is bound twice", binding.name),
            ));
        }
        if let Some(role_names) = role_names {
            for (j, role) in binding.roles.iter().flatten().enumerate() {
                if !role_names.contains(role.as_str()) {
                    out.push(violation(
                        format!("{at}.roles[{j}]"),
                        format!("no role named {role:?} in spec.roles"),
                    ));
                }
            }
        }
        out.extend(signal_queries(&binding.signals, &format!("{at}.signals")));
        if let Some(d) = &binding.digest
            && !is_sha256_digest(d)
        {
            out.push(violation(
                format!("{at}.digest"),
                format!("{d:?} must look like sha256:<64 lowercase hex digits>"),
            ));
        }
    }
    out
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}
