//! Reading user input files (manifests, plan cases) with errors that name the
//! file and the field. A set read here has been checked and defaulted against
//! our CRD schema, exactly as the API server would, then validated.

use crate::api::crd::set_schema;
use crate::api::set::DisaggregatedSet;
use crate::api::{structural, validate};
use crate::core::plan::PlanCase;
use kube::Resource;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::Path;

/// Bad input: a one-line message that names the file and, where there is one, the field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct InputError {
    pub file: String,
    pub message: String,
}

fn error(file: &Path, message: impl Into<String>) -> InputError {
    InputError {
        file: file.display().to_string(),
        message: message.into(),
    }
}

fn read(file: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(file).map_err(|e| error(file, format!("cannot read: {e}")))
}

/// Deserialises with the failing field's path in the message.
fn typed<T: DeserializeOwned>(file: &Path, value: Value) -> Result<T, InputError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        if path == "." {
            error(file, message)
        } else {
            error(file, format!("{path}: {message}"))
        }
    })
}

/// Reads a file holding one DisaggregatedSet (YAML or JSON).
pub fn load_set(file: &Path) -> Result<DisaggregatedSet, InputError> {
    let text = read(file)?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value =
            Value::deserialize(doc).map_err(|e| error(file, format!("invalid YAML: {e}")))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    let mut value = match docs.len() {
        1 => docs.remove(0),
        0 => {
            return Err(error(
                file,
                "no document found; expected one DisaggregatedSet",
            ));
        }
        n => {
            return Err(error(
                file,
                format!("holds {n} documents; expected one DisaggregatedSet"),
            ));
        }
    };
    set_from_value(file, &mut value)
}

/// Checks, defaults, deserialises and validates one DisaggregatedSet.
pub fn set_from_value(file: &Path, value: &mut Value) -> Result<DisaggregatedSet, InputError> {
    let api_version = DisaggregatedSet::api_version(&());
    let kind = DisaggregatedSet::kind(&());
    let got = (
        value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or(""),
        value.get("kind").and_then(Value::as_str).unwrap_or(""),
    );
    if got != (api_version.as_ref(), kind.as_ref()) {
        return Err(error(
            file,
            format!(
                "apiVersion/kind: expected {api_version} {kind}, got {:?} {:?}",
                got.0, got.1
            ),
        ));
    }
    // The schema of the CRD we ship, so an offline check sees what the API server would.
    let schema = set_schema();
    let problems = structural::check(schema, value);
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(error(file, list.join("; ")));
    }
    structural::apply_defaults(schema, value);
    let mut set: DisaggregatedSet = typed(file, value.clone())?;
    if set.metadata.name.is_none() {
        return Err(error(file, "metadata.name: required value"));
    }
    set.metadata
        .namespace
        .get_or_insert_with(|| "default".to_string());
    let violations = validate::validate(&set);
    if !violations.is_empty() {
        let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
        return Err(error(file, list.join("; ")));
    }
    Ok(set)
}

/// Reads a JSON array of plan cases (`rollout-vectors.json` format, `steps` optional).
pub fn load_plan_cases(file: &Path) -> Result<Vec<PlanCase>, InputError> {
    let text = read(file)?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| error(file, format!("invalid JSON: {e}")))?;
    let cases: Vec<PlanCase> = typed(file, value)?;
    for (i, case) in cases.iter().enumerate() {
        case.check()
            .map_err(|m| error(file, format!("[{i}].{m}")))?;
    }
    Ok(cases)
}
