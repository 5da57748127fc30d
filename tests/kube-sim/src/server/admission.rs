//! Admission of objects of CRD-defined resources: schema checks, pruning,
//! defaulting, and CRDs becoming Established.

use super::*;

/// Marks a CRD Established and its names accepted, as the real server does.
pub(super) fn establish(store: &Store, crd: &Value) {
    let name = crd["metadata"]["name"].as_str().unwrap_or_default();
    let Ok(mut current) = store.get(&crd_resource(), "", name) else {
        return;
    };
    let now = current["metadata"]["creationTimestamp"].clone();
    let condition = |t: &str, reason: &str| json!({"type": t, "status": "True", "reason": reason, "message": "", "lastTransitionTime": now});
    current["status"] = json!({
        "conditions": [condition("NamesAccepted", "NoConflicts"), condition("Established", "InitialNamesAccepted")],
        "acceptedNames": current["spec"]["names"].clone(),
        "storedVersions": current["spec"]["versions"].as_array().into_iter().flatten()
            .filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>(),
    });
    if current["status"]
        != store
            .get(&crd_resource(), "", name)
            .map(|c| c["status"].clone())
            .unwrap_or_default()
    {
        let _ = store.update(&crd_resource(), "", name, current, true);
    }
}

/// Validates, prunes and defaults an object of a CRD-defined resource against
/// its schema, as the API server does before storing it. Unknown fields are an
/// error with `fieldValidation=Strict` (kubectl's default) and dropped otherwise.
pub(super) fn admit(
    custom: &Option<Custom>,
    kind: &str,
    object: &mut Value,
    strict: bool,
) -> Result<(), StoreError> {
    let Some(schema) = custom.as_ref().and_then(|c| c.schema.as_ref()) else {
        return Ok(());
    };
    let problems: Vec<String> = disagg_schema::check(schema, object)
        .into_iter()
        .filter(|p| strict || p.message != "unknown field")
        .map(|p| p.to_string())
        .collect();
    if !problems.is_empty() {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        return Err(StoreError {
            code: 422,
            reason: "Invalid",
            message: format!("{kind} \"{name}\" is invalid: {}", problems.join(", ")),
        });
    }
    disagg_schema::prune(schema, object);
    disagg_schema::apply_defaults(schema, object);
    Ok(())
}

/// Refuses fields the schema does not know (a partial object, such as an
/// applied configuration, is not checked for anything else).
pub(super) fn reject_unknown_fields(
    custom: &Option<Custom>,
    kind: &str,
    object: &Value,
) -> Result<(), StoreError> {
    let Some(schema) = custom.as_ref().and_then(|c| c.schema.as_ref()) else {
        return Ok(());
    };
    let unknown: Vec<String> = disagg_schema::check(schema, object)
        .into_iter()
        .filter(|p| p.message == "unknown field")
        .map(|p| p.to_string())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    Err(StoreError {
        code: 422,
        reason: "Invalid",
        message: format!("{kind} \"{name}\" is invalid: {}", unknown.join(", ")),
    })
}
