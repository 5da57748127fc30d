//! Helpers for patching the pod templates of a rendered LeaderWorkerSet.
//!
//! [`PodPatch`] reads only the shape of the LWS it is given (container names,
//! which lists exist and the names in them), skipping everything else without
//! building it in memory, and emits a small RFC 6902 patch: appends and
//! replaces at exact paths. A 20 KB template therefore costs a skim, not a
//! parse, a copy and a re-serialisation; this is what keeps a hook call in
//! the tens of microseconds.
//!
//! Every edit applies to the worker template and, when present, the leader
//! template. An env var, volume, volume mount or sidecar with a name already
//! present is replaced rather than duplicated.

use crate::Patch;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};

/// Edits to the pod templates of one LWS, recorded as JSON patch operations.
pub struct PodPatch {
    templates: Vec<TemplateShape>,
    ops: Vec<Value>,
}

impl PodPatch {
    /// Reads the shape of the LWS JSON in a `patch-role` request (`req.lws_json()`).
    pub fn new(lws_json: &str) -> Result<Self, String> {
        let lws: LwsShape = serde_json::from_str(lws_json)
            .map_err(|e| format!("host sent an LWS this plugin cannot read: {e}"))?;
        let t = lws.spec.leader_worker_template;
        let mut templates = vec![TemplateShape::new(
            "/spec/leaderWorkerTemplate/workerTemplate",
            t.worker_template,
        )];
        if let Some(leader) = t.leader_template {
            templates.push(TemplateShape::new(
                "/spec/leaderWorkerTemplate/leaderTemplate",
                leader,
            ));
        }
        Ok(PodPatch {
            templates,
            ops: Vec::new(),
        })
    }

    /// The name of the worker template's first container, if any.
    pub fn first_container(&self) -> Option<&str> {
        self.templates
            .first()?
            .containers
            .first()
            .map(|c| c.name.as_str())
    }

    fn each(&mut self, mut edit: impl FnMut(&mut TemplateShape, &mut Vec<Value>)) -> &mut Self {
        for t in &mut self.templates {
            edit(t, &mut self.ops);
        }
        self
    }

    /// Adds or replaces an env var on the named container.
    pub fn env(&mut self, container: &str, name: &str, value: &str) -> &mut Self {
        self.each(|t, ops| {
            if let Some(i) = t.container(container) {
                let path = format!("{}/spec/containers/{i}/env", t.path);
                t.containers[i]
                    .env
                    .upsert(ops, &path, name, json!({"name": name, "value": value}));
            }
        })
    }

    /// Appends args to the named container.
    pub fn args<S: AsRef<str>>(&mut self, container: &str, args: &[S]) -> &mut Self {
        self.each(|t, ops| {
            if let Some(i) = t.container(container) {
                let path = format!("{}/spec/containers/{i}/args", t.path);
                for a in args {
                    t.containers[i]
                        .args
                        .append(ops, &path, Value::String(a.as_ref().to_string()));
                }
            }
        })
    }

    /// Sets the named container's resources (requests/limits) object.
    pub fn resources(&mut self, container: &str, resources: Value) -> &mut Self {
        self.each(|t, ops| {
            if let Some(i) = t.container(container) {
                let path = format!("{}/spec/containers/{i}/resources", t.path);
                ops.push(json!({"op": "add", "path": path, "value": resources}));
            }
        })
    }

    /// Adds or replaces a pod volume (by name), and mounts it in the named container.
    pub fn volume(&mut self, container: &str, volume: Value, mount_path: &str) -> &mut Self {
        let name = volume
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.each(|t, ops| {
            let path = format!("{}/spec/volumes", t.path);
            t.volumes.upsert(ops, &path, &name, volume.clone());
            if let Some(i) = t.container(container) {
                let path = format!("{}/spec/containers/{i}/volumeMounts", t.path);
                t.containers[i].volume_mounts.upsert(
                    ops,
                    &path,
                    &name,
                    json!({"name": name, "mountPath": mount_path}),
                );
            }
        })
    }

    /// Adds or replaces a sidecar container (by name).
    pub fn sidecar(&mut self, sidecar: Value) -> &mut Self {
        let name = sidecar
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.each(|t, ops| {
            let path = format!("{}/spec/containers", t.path);
            let mut names = NamedList {
                exists: true,
                names: t.containers.iter().map(|c| c.name.clone()).collect(),
            };
            names.upsert(ops, &path, &name, sidecar.clone());
            if t.container(&name).is_none() {
                t.containers.push(ContainerShape {
                    name: name.clone(),
                    ..ContainerShape::default()
                });
            }
        })
    }

    /// Adds a toleration.
    pub fn toleration(&mut self, toleration: Value) -> &mut Self {
        self.each(|t, ops| {
            let path = format!("{}/spec/tolerations", t.path);
            t.tolerations.append(ops, &path, toleration.clone());
        })
    }

    /// Sets a nodeSelector entry.
    pub fn node_selector(&mut self, key: &str, value: &str) -> &mut Self {
        self.each(|t, ops| {
            let path = format!("{}/spec/nodeSelector", t.path);
            if t.node_selector {
                ops.push(
                    json!({"op": "add", "path": format!("{path}/{}", escape(key)), "value": value}),
                );
            } else {
                let mut m = Map::new();
                m.insert(key.to_string(), Value::String(value.to_string()));
                ops.push(json!({"op": "add", "path": path, "value": m}));
                t.node_selector = true;
            }
        })
    }

    /// The patch; `Patch::None` when nothing was edited.
    pub fn into_patch(self) -> Patch {
        if self.ops.is_empty() {
            Patch::None
        } else {
            Patch::Json(Value::Array(self.ops))
        }
    }
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// What we track of a template while editing it.
struct TemplateShape {
    path: &'static str,
    containers: Vec<ContainerShape>,
    volumes: NamedList,
    tolerations: NamedList,
    node_selector: bool,
}

impl TemplateShape {
    fn new(path: &'static str, t: PodTemplateShape) -> Self {
        let spec = t.spec.unwrap_or_default();
        TemplateShape {
            path,
            containers: spec.containers.unwrap_or_default(),
            volumes: NamedList::from(spec.volumes),
            tolerations: NamedList {
                exists: spec.tolerations.is_some(),
                names: Vec::new(),
            },
            node_selector: spec.node_selector.is_some(),
        }
    }

    fn container(&self, name: &str) -> Option<usize> {
        self.containers.iter().position(|c| c.name == name)
    }
}

/// A JSON array we append to, with the `name` of each entry (empty when unnamed).
#[derive(Default)]
struct NamedList {
    exists: bool,
    names: Vec<String>,
}

impl From<Option<Vec<Named>>> for NamedList {
    fn from(list: Option<Vec<Named>>) -> Self {
        NamedList {
            exists: list.is_some(),
            names: list
                .unwrap_or_default()
                .into_iter()
                .map(|n| n.name.unwrap_or_default())
                .collect(),
        }
    }
}

impl NamedList {
    fn append(&mut self, ops: &mut Vec<Value>, path: &str, item: Value) {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if self.exists {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": item}));
        } else {
            ops.push(json!({"op": "add", "path": path, "value": [item]}));
            self.exists = true;
        }
        self.names.push(name);
    }

    fn upsert(&mut self, ops: &mut Vec<Value>, path: &str, name: &str, item: Value) {
        match self.names.iter().position(|n| n == name) {
            Some(i) => {
                ops.push(json!({"op": "replace", "path": format!("{path}/{i}"), "value": item}))
            }
            None => self.append(ops, path, item),
        }
    }
}

// The shape of an LWS, read without building the rest.

#[derive(Deserialize)]
struct LwsShape {
    spec: LwsSpecShape,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LwsSpecShape {
    leader_worker_template: LwtShape,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LwtShape {
    worker_template: PodTemplateShape,
    #[serde(default)]
    leader_template: Option<PodTemplateShape>,
}

#[derive(Deserialize)]
struct PodTemplateShape {
    #[serde(default)]
    spec: Option<PodSpecShape>,
    #[serde(default, rename = "metadata")]
    _metadata: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSpecShape {
    #[serde(default)]
    containers: Option<Vec<ContainerShape>>,
    #[serde(default)]
    volumes: Option<Vec<Named>>,
    #[serde(default)]
    tolerations: Option<IgnoredAny>,
    #[serde(default)]
    node_selector: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ContainerShape {
    name: String,
    #[serde(default, deserialize_with = "named_list")]
    env: NamedList,
    #[serde(default, deserialize_with = "plain_list")]
    args: NamedList,
    #[serde(default, deserialize_with = "named_list")]
    volume_mounts: NamedList,
}

#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    name: Option<String>,
}

/// Entries are read for their `name` only; everything else is skipped.
fn named_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NamedList, D::Error> {
    Ok(NamedList::from(Option::<Vec<Named>>::deserialize(d)?))
}

/// A list whose entries have no name (args): only its length matters.
fn plain_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NamedList, D::Error> {
    let entries: Option<Vec<IgnoredAny>> = Option::deserialize(d)?;
    Ok(NamedList {
        exists: entries.is_some(),
        names: vec![String::new(); entries.map_or(0, |e| e.len())],
    })
}
