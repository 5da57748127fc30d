//! Watches: from a resourceVersion, with bookmarks, timeouts, and 410 as an ERROR event.

use super::*;

pub(super) async fn watch(
    sim: &Arc<Sim>,
    resource: &ResourceId,
    info: &ResourceInfo,
    filter: Filter,
    query: &HashMap<String, String>,
    table: Option<crate::table::Columns>,
) -> Result<Response, StoreError> {
    let store = &sim.store;
    let from = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let api_version = api_version(resource);
    let kind = info.kind.clone();
    let line = {
        let (api_version, kind) = (api_version.clone(), kind.clone());
        move |type_: &str, mut object: Value| {
            if let Some(o) = object.as_object_mut() {
                o.insert("apiVersion".into(), json!(api_version));
                o.insert("kind".into(), json!(kind));
            }
            // `kubectl get -w`: every event carries a one-row Table.
            if let Some(columns) = &table {
                let rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                object = columns.table(std::slice::from_ref(&object), &rv);
            }
            event_line(type_, &object)
        }
    };
    // No version (or "0"): start with the current state as ADDED events.
    let (initial, start) = if from.is_empty() || from == "0" {
        let page = store.list(resource, &filter, 0, None)?;
        (page.items, page.resource_version)
    } else {
        let rv = from
            .parse::<u64>()
            .map_err(|_| bad_request(format!("invalid resourceVersion {from:?}")))?;
        (Vec::new(), rv)
    };
    let (backlog, receiver) = match store.watch(resource, &filter, start) {
        Ok(w) => w,
        Err(e) if e.code == 410 => {
            // Like the real server: a 200 stream carrying one ERROR event.
            let body = event_line("ERROR", &e.to_status());
            return Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response());
        }
        Err(e) => return Err(e),
    };
    let mut last = start;
    let mut head: Vec<Bytes> = initial.into_iter().map(|o| line("ADDED", o)).collect();
    for e in backlog {
        last = e.resource_version;
        head.push(line(e.kind.as_str(), Arc::unwrap_or_clone(e.object)));
    }
    let resource = resource.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    let drops = sim.faults.watch_drops();
    let faults = sim.clone();
    let live = futures::stream::unfold(
        (receiver, last, drops),
        move |(mut rx, mut last, mut drops)| {
            let (resource, filter, line, api_version, kind) = (
                resource.clone(),
                filter.clone(),
                line.clone(),
                api_version.clone(),
                kind.clone(),
            );
            let delay = faults.faults.watch_delay();
            async move {
                loop {
                    let tick = tokio::time::sleep(BOOKMARK_EVERY);
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => return None,
                        _ = drops.changed() => return None,
                        _ = tick, if bookmarks => {
                            let mark = json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": last.to_string()}});
                            return Some((event_line("BOOKMARK", &mark), (rx, last, drops)));
                        }
                        received = rx.recv() => match received {
                            Ok(WatchEvent { resource: r, namespace, resource_version, kind: k, object, at }) => {
                                if r != resource || resource_version <= last || !filter.matches(&namespace, &object) {
                                    continue;
                                }
                                if !delay.is_zero() {
                                    tokio::time::sleep_until((at + delay).into()).await;
                                }
                                last = resource_version;
                                let type_ = match k { EventType::Added => "ADDED", EventType::Modified => "MODIFIED", EventType::Deleted => "DELETED" };
                                return Some((line(type_, Arc::unwrap_or_clone(object)), (rx, last, drops)));
                            }
                            // Fell behind or the store went away: end the watch; the client re-lists.
                            Err(_) => return None,
                        }
                    }
                }
            }
        },
    );
    let stream = futures::stream::iter(head)
        .chain(live)
        .map(Ok::<_, std::convert::Infallible>);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// One line of a watch: `type` before `object`, as the real server writes
/// it. (`json!` sorts keys, which put `object` first; serde, and so kube-rs,
/// reads an event's object straight into its type only when it has read the
/// `type` first, and otherwise buffers the whole object and reads it twice.)
fn event_line(type_: &str, object: &Value) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":{},\"object\":{object}}}\n",
        Value::from(type_)
    ))
}
