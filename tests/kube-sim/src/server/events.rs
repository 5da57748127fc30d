//! One store of Events behind both of the API server's groups, as a real
//! server keeps them: core `v1` (what `kubectl get events` and `kubectl
//! describe` read) and `events.k8s.io/v1` (what kube-rs's recorder writes).
//! Objects are stored in the core shape; a request to `events.k8s.io` has
//! its body converted on the way in and its answer (one object, a list, or
//! every line of a watch) on the way out.

use super::*;

/// `(events.k8s.io/v1 field, core v1 field)`; every other field is the same in both.
const RENAMED: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Whether a request is for the `events.k8s.io` view.
pub(super) fn is_view(resource: &ResourceId) -> bool {
    resource.group == "events.k8s.io" && resource.plural == "events"
}

/// Where the view's objects are stored.
pub(super) fn stored() -> ResourceId {
    ResourceId::new("", "v1", "events")
}

fn rename(object: &mut Value, to_core: bool, api_version: &str) {
    let Some(o) = object.as_object_mut() else {
        return;
    };
    for (view, core) in RENAMED {
        let (from, to) = if to_core { (view, core) } else { (core, view) };
        if let Some(v) = o.remove(from) {
            o.insert(to.to_string(), v);
        }
    }
    if o.contains_key("apiVersion") {
        o.insert("apiVersion".into(), json!(api_version));
    }
}

/// A request body for the view, in the stored shape: an object or merge
/// patch has its fields renamed, a JSON patch its paths.
pub(super) fn body_in(body: &Bytes) -> Bytes {
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        // YAML (server-side apply from kubectl): parsed the same way.
        let Ok(mut value) = serde_yaml_ng::from_slice::<Value>(body) else {
            return body.clone();
        };
        rename(&mut value, true, "v1");
        return Bytes::from(value.to_string());
    };
    match &mut value {
        Value::Array(ops) => {
            for op in ops.iter_mut() {
                for key in ["path", "from"] {
                    if let Some(path) = op.get(key).and_then(Value::as_str) {
                        let renamed = RENAMED.iter().find_map(|(view, core)| {
                            let rest = path.strip_prefix('/')?.strip_prefix(view)?;
                            (rest.is_empty() || rest.starts_with('/'))
                                .then(|| format!("/{core}{rest}"))
                        });
                        if let Some(p) = renamed {
                            op[key] = json!(p);
                        }
                    }
                }
            }
        }
        other => rename(other, true, "v1"),
    }
    Bytes::from(value.to_string())
}

/// One answer document in the view's shape.
fn document_out(doc: &mut Value) {
    match doc["kind"].as_str() {
        Some("Event") => rename(doc, false, "events.k8s.io/v1"),
        Some("EventList") => {
            doc["apiVersion"] = json!("events.k8s.io/v1");
            if let Some(items) = doc["items"].as_array_mut() {
                items
                    .iter_mut()
                    .for_each(|i| rename(i, false, "events.k8s.io/v1"));
            }
        }
        // A watch event.
        None if doc.get("type").is_some() && doc["object"]["kind"] == "Event" => {
            rename(&mut doc["object"], false, "events.k8s.io/v1");
        }
        _ => {}
    }
}

fn line_out(line: &[u8]) -> Bytes {
    match serde_json::from_slice::<Value>(line) {
        Ok(mut doc) => {
            document_out(&mut doc);
            Bytes::from(doc.to_string())
        }
        Err(_) => Bytes::copy_from_slice(line),
    }
}

/// The answer in the view's shape, streamed: each complete line (a watch
/// event) as it comes, the rest (one document) at the end.
pub(super) fn answer_out(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let stream = futures::stream::unfold(
        (body.into_data_stream(), Vec::<u8>::new(), false),
        |(mut data, mut buffer, mut done)| async move {
            loop {
                if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let mut out = line_out(&line[..line.len() - 1]).to_vec();
                    out.push(b'\n');
                    return Some((Ok::<_, axum::Error>(Bytes::from(out)), (data, buffer, done)));
                }
                if done {
                    if buffer.is_empty() {
                        return None;
                    }
                    let rest = std::mem::take(&mut buffer);
                    return Some((Ok(line_out(&rest)), (data, buffer, done)));
                }
                match data.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (data, buffer, true))),
                    None => done = true,
                }
            }
        },
    );
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from_stream(stream))
}
