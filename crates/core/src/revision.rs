//! The revision hash (`docs/api.md`): the first 8 hex digits of a sha256 over the
//! ordered role names and their `leaderWorkerTemplate`s, plus, for every
//! template-patching plugin bound to a role, its name, digest and config.
//!
//! Replicas, slices, placement, scaling mode and role metadata are not hashed:
//! changing them scales, it does not roll out.

use disagg_api::set::DisaggregatedSetSpec;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write;

/// A template-patching plugin as it enters the hash.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplatePlugin<'a> {
    pub name: &'a str,
    /// The digest of the component in use (`sha256:…`).
    pub digest: &'a str,
    pub config: Option<&'a Map<String, Value>>,
    /// Roles it applies to; all when `None`.
    pub roles: Option<&'a [String]>,
}

/// The 8-hex-digit revision of a spec.
pub fn revision(spec: &DisaggregatedSetSpec, plugins: &[TemplatePlugin<'_>]) -> String {
    let mut h = Sha256::new();
    for role in &spec.roles {
        field(&mut h, b"role", role.name.as_bytes());
        let template = serde_json::to_value(&role.spec.leader_worker_template)
            .expect("a template serialises to JSON");
        field(&mut h, b"template", canonical_json(&template).as_bytes());
        for p in plugins {
            if p.roles.is_none_or(|r| r.contains(&role.name)) {
                field(&mut h, b"plugin", p.name.as_bytes());
                field(&mut h, b"digest", p.digest.as_bytes());
                let config = p.config.cloned().map(Value::Object).unwrap_or(Value::Null);
                field(&mut h, b"config", canonical_json(&config).as_bytes());
            }
        }
    }
    let digest = h.finalize();
    digest[..4]
        .iter()
        .fold(String::with_capacity(8), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Length-prefixed fields, so that no two different inputs hash the same bytes.
fn field(h: &mut Sha256, tag: &[u8], value: &[u8]) {
    h.update(tag);
    h.update((value.len() as u64).to_be_bytes());
    h.update(value);
}

/// JSON with object keys sorted at every level, independent of how the map was built.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}
