//! The store's vocabulary: resource ids and facts, errors, watch events, list filters and pages.

use super::*;

/// A resource type, as in the URL: group (empty for core), version, plural.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    pub group: String,
    pub version: String,
    pub plural: String,
}

impl ResourceId {
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        ResourceId {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
        }
    }
}

/// How the store treats a resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    pub kind: String,
    pub namespaced: bool,
    /// With a status subresource, the main endpoint ignores `status` and the
    /// status endpoint ignores everything else.
    pub status_subresource: bool,
    /// Discovery's short names (`cm`, `lws`, …).
    pub short_names: Vec<String>,
}

/// A failed request, with the API server's status code and reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl StoreError {
    pub(crate) fn new(code: u16, reason: &'static str, message: String) -> Self {
        StoreError {
            code,
            reason,
            message,
        }
    }
    pub(crate) fn not_found(kind: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{kind} \"{name}\" not found"))
    }
    pub(crate) fn invalid(message: String) -> Self {
        Self::new(422, "Invalid", message)
    }
    /// The `Status` object the API server would send.
    pub fn to_status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as a watch delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchEvent {
    pub resource: ResourceId,
    pub namespace: String,
    pub resource_version: u64,
    pub kind: EventType,
    /// Shared by every watcher (and the log): a watch clones only the events
    /// it sends, not every event of every resource it is handed.
    pub object: std::sync::Arc<Value>,
    /// When it happened (for the watch-delay fault).
    pub at: std::time::Instant,
}

/// Which objects a list or watch wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    pub labels: Selector,
    /// `metadata.name` / `metadata.namespace` equality (`!=` when the flag is false).
    pub fields: Vec<(String, String, bool)>,
}

impl Filter {
    pub fn matches(&self, namespace: &str, object: &Value) -> bool {
        if self.namespace.as_deref().is_some_and(|n| n != namespace) {
            return false;
        }
        let labels = object["metadata"]["labels"].as_object();
        self.labels
            .matches(|k| labels.and_then(|m| m.get(k)).and_then(Value::as_str))
            && self.fields.iter().all(|(field, want, equal)| {
                let got = match field.as_str() {
                    "metadata.namespace" => namespace.to_string(),
                    // Any other field the selector was allowed to name, by its dotted path.
                    path => path
                        .split('.')
                        .try_fold(object, |v, key| v.get(key))
                        .map(|v| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .unwrap_or_default(),
                };
                (got == *want) == *equal
            })
    }

    /// Parses `metadata.name=x,metadata.namespace!=y`, and for Events the
    /// fields the API server indexes them by (`involvedObject.name`, `reason`,
    /// `type`, …: what `kubectl describe` and `kubectl get events` ask for).
    pub fn parse_fields_of(
        resource: &ResourceId,
        text: &str,
    ) -> Result<Vec<(String, String, bool)>, StoreError> {
        let fields = Self::parse_terms(text)?;
        let allowed = |f: &str| {
            matches!(f, "metadata.name" | "metadata.namespace")
                || (resource.plural == "events" && EVENT_FIELDS.contains(&f))
        };
        match fields.iter().find(|(f, _, _)| !allowed(f)) {
            Some((f, _, _)) => Err(StoreError::new(
                400,
                "BadRequest",
                format!("field label not supported: {f}"),
            )),
            None => Ok(fields),
        }
    }

    /// Parses `metadata.name=x,metadata.namespace!=y`.
    pub fn parse_fields(text: &str) -> Result<Vec<(String, String, bool)>, StoreError> {
        Self::parse_fields_of(&ResourceId::new("", "v1", "configmaps"), text)
    }

    fn parse_terms(text: &str) -> Result<Vec<(String, String, bool)>, StoreError> {
        let mut out = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                return Err(StoreError::new(
                    400,
                    "BadRequest",
                    format!("invalid field selector {term:?}"),
                ));
            };
            out.push((field.to_string(), value.to_string(), equal));
        }
        Ok(out)
    }
}

/// A page of a list.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub items: Vec<Value>,
    pub resource_version: u64,
    /// Pass back to get the next page.
    pub continue_token: Option<String>,
    /// How many objects the pages after this one hold (with a continue token).
    pub remaining: Option<usize>,
}

/// The fields of a (core v1) Event a field selector may name, as the API server's.
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];
