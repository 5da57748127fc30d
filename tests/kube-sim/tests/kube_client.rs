//! kube-rs's own client and watcher against kube-sim's HTTP server.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use kube_sim::server::{Sim, router};
use kube_sim::store::Store;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn start() -> (kube::Client, Arc<Store>) {
    let store = Arc::new(Store::default());
    let sim = Sim::new(store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(sim);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    (kube::Client::try_from(config).unwrap(), store)
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

#[tokio::test]
async fn crud_selectors_conflicts_and_patches() {
    let (client, _) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let a = api
        .create(&PostParams::default(), &cm("a", json!({"role": "prefill"})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", json!({"role": "decode"})))
        .await
        .unwrap();
    let err = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    let listed = api
        .list(&ListParams::default().labels("role=prefill"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(listed.metadata.resource_version.is_some());
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    let rest = api
        .list(
            &ListParams::default()
                .limit(1)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items[0].metadata.name.as_deref(), Some("b"));

    let mut stale = a.clone();
    let mut fresh = a.clone();
    fresh
        .data
        .get_or_insert_default()
        .insert("k".into(), "2".into());
    api.replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    stale
        .data
        .get_or_insert_default()
        .insert("k".into(), "3".into());
    let err = api
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    let merged = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"m": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.data.as_ref().unwrap()["m"], "1");
    let ops = serde_json::from_value(json!([{"op": "replace", "path": "/data/k", "value": "j"}]))
        .unwrap();
    let patched = api
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(patched.data.as_ref().unwrap()["k"], "j");

    api.delete("a", &DeleteParams::default()).await.unwrap();
    let err = api.get("a").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_watcher_sees_every_change_once() {
    let (client, _) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("before", json!({})))
        .await
        .unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            api.create(&PostParams::default(), &cm("after", json!({})))
                .await
                .unwrap();
            api.delete("before", &DeleteParams::default())
                .await
                .unwrap();
        })
    };
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), events.try_next())
        .await
        .expect("a watch event within 5 s")
    {
        let label = match &e {
            watcher::Event::Init => "init".to_string(),
            watcher::Event::InitApply(o) => {
                format!("init-apply {}", o.metadata.name.as_deref().unwrap())
            }
            watcher::Event::InitDone => "init-done".to_string(),
            watcher::Event::Apply(o) => format!("apply {}", o.metadata.name.as_deref().unwrap()),
            watcher::Event::Delete(o) => format!("delete {}", o.metadata.name.as_deref().unwrap()),
        };
        seen.push(label);
        if seen.last().map(String::as_str) == Some("delete before") {
            break;
        }
    }
    writer.await.unwrap();
    assert_eq!(
        seen,
        [
            "init",
            "init-apply before",
            "init-done",
            "apply after",
            "delete before"
        ]
    );
}

/// Creates ConfigMaps `a` and `b`; returns the resourceVersion `a` was
/// created at (so a watch from it sees `b`'s creation).
async fn two_configmaps(api: &Api<ConfigMap>) -> String {
    let a = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    a.metadata.resource_version.unwrap()
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_gets_410_as_an_error_event() {
    let (client, store) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let rv = two_configmaps(&api).await;
    store.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn bookmarks_carry_the_latest_version() {
    let (client, _) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let a = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let rv = a.metadata.resource_version.clone().unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let mut latest = String::new();
    while let Some(e) = stream.try_next().await.unwrap() {
        match e {
            WatchEvent::Added(o) => latest = o.metadata.resource_version.unwrap(),
            WatchEvent::Bookmark(b) => {
                assert_eq!(b.metadata.resource_version, latest);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!latest.is_empty());
}

fn owned(name: &str, owner: &ConfigMap) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid, "controller": true}]}}))
    .unwrap()
}

async fn gone(api: &Api<ConfigMap>, name: &str) -> bool {
    for _ in 0..100 {
        if api.get_opt(name).await.unwrap().is_none() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents_unless_orphaned() {
    let (client, _) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let parent = api
        .create(&PostParams::default(), &cm("parent", json!({})))
        .await
        .unwrap();
    let child = api
        .create(&PostParams::default(), &owned("child", &parent))
        .await
        .unwrap();
    api.create(&PostParams::default(), &owned("grandchild", &child))
        .await
        .unwrap();
    api.create(&PostParams::default(), &cm("bystander", json!({})))
        .await
        .unwrap();
    api.delete("parent", &DeleteParams::background())
        .await
        .unwrap();
    assert!(gone(&api, "child").await && gone(&api, "grandchild").await);
    assert!(api.get_opt("bystander").await.unwrap().is_some());

    let parent = api
        .create(&PostParams::default(), &cm("parent2", json!({})))
        .await
        .unwrap();
    api.create(&PostParams::default(), &owned("kept", &parent))
        .await
        .unwrap();
    api.delete("parent2", &DeleteParams::orphan())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kept = api.get("kept").await.unwrap();
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // Foreground: the owner stays, marked, while a dependent's finalizer holds
    // it, and goes when the dependent does.
    let parent = api
        .create(&PostParams::default(), &cm("parent3", json!({})))
        .await
        .unwrap();
    let mut held = owned("held", &parent);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    api.create(&PostParams::default(), &held).await.unwrap();
    api.delete("parent3", &DeleteParams::foreground())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let marked = api.get("parent3").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(
        marked.metadata.finalizers.unwrap(),
        vec!["foregroundDeletion"]
    );
    assert!(
        api.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some(),
        "the dependent is being deleted"
    );
    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(gone(&api, "held").await && gone(&api, "parent3").await);

    // An object that arrives owned by something already gone is collected;
    // one that still has an owner is not.
    let a = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let b = api
        .create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let mut shared = owned("shared", &a);
    shared
        .metadata
        .owner_references
        .get_or_insert_with(Vec::new)
        .extend(owned("-", &b).metadata.owner_references.unwrap());
    api.create(&PostParams::default(), &shared).await.unwrap();
    api.delete("a", &DeleteParams::background()).await.unwrap();
    api.create(&PostParams::default(), &owned("late", &a))
        .await
        .unwrap();
    assert!(gone(&api, "late").await, "its owner was gone when it came");
    assert!(
        api.get_opt("shared").await.unwrap().is_some(),
        "b still owns it"
    );
    api.delete("b", &DeleteParams::background()).await.unwrap();
    assert!(gone(&api, "shared").await, "its last owner went");
}

/// An apply body may be YAML (as `curl --data-binary @cm.yaml` sends it) or
/// JSON (as every client library does); both apply the same, and a body
/// that is neither is a 400.
#[tokio::test]
async fn an_apply_body_may_be_yaml_or_json() {
    let (client, _) = start().await;
    let apply = |name: &str, body: String| {
        axum::http::Request::patch(format!(
            "/api/v1/namespaces/default/configmaps/{name}?fieldManager=me"
        ))
        .header("content-type", "application/apply-patch+yaml")
        .body(body.into_bytes())
        .unwrap()
    };
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  a: \"1\"\n";
    let json = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "j"}, "data": {"a": "1"}});
    for (name, body) in [("y", yaml.to_string()), ("j", json.to_string())] {
        client.request_text(apply(name, body)).await.unwrap();
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["y", "j"] {
        let cm = api.get(name).await.unwrap();
        assert_eq!(cm.data.unwrap()["a"], "1", "{name}");
        assert_eq!(
            cm.metadata.managed_fields.unwrap()[0].operation.as_deref(),
            Some("Apply")
        );
    }
    let err = client
        .request_text(apply("bad", "{not: [json".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400 && s.message.contains("not YAML or JSON")),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_side_apply_tracks_owners_conflicts_and_force() {
    let (client, _) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let applied = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": data});
    // Apply creates.
    let operator = PatchParams::apply("operator");
    let v1 = api
        .patch(
            "ssa",
            &operator,
            &Patch::Apply(applied(json!({"a": "1", "b": "2"}))),
        )
        .await
        .unwrap();
    let owners = v1.metadata.managed_fields.clone().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].manager.as_deref(), Some("operator"));
    assert_eq!(owners[0].operation.as_deref(), Some("Apply"));
    assert_eq!(
        owners[0].fields_v1.as_ref().unwrap().0,
        json!({"f:data": {"f:a": {}, "f:b": {}}})
    );

    // Someone else changes a field by update; the operator's apply of a different value conflicts.
    api.patch(
        "ssa",
        &PatchParams {
            field_manager: Some("human".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"data": {"a": "human"}})),
    )
    .await
    .unwrap();
    let err = api
        .patch(
            "ssa",
            &operator,
            &Patch::Apply(applied(json!({"a": "1", "b": "2"}))),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.message.contains("conflict with \"human\": .data.a")),
        "{err:?}"
    );
    // Forced, it takes the field back; dropping b from the apply removes it.
    let forced = api
        .patch(
            "ssa",
            &operator.clone().force(),
            &Patch::Apply(applied(json!({"a": "1"}))),
        )
        .await
        .unwrap();
    let forced_version = forced.metadata.resource_version.clone();
    assert_eq!(
        forced.data.unwrap().into_iter().collect::<Vec<_>>(),
        vec![("a".to_string(), "1".to_string())]
    );
    let managers: Vec<_> = forced
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, vec!["operator"], "human owns nothing any more");

    // Applying an unchanged configuration writes nothing.
    let again = api
        .patch(
            "ssa",
            &operator.clone().force(),
            &Patch::Apply(applied(json!({"a": "1"}))),
        )
        .await
        .unwrap();
    assert_eq!(again.metadata.resource_version, forced_version);
    // The apply must name the object of the URL.
    let err = api
        .patch("other", &operator, &Patch::Apply(applied(json!({}))))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );
}

/// Events are one store behind both groups, as on a real API server: what
/// kube-rs's recorder writes to events.k8s.io/v1 is what `kubectl get events`
/// and `kubectl describe` read from core v1, field selectors included.
#[tokio::test]
async fn events_are_one_store_behind_both_groups() {
    use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
    use k8s_openapi::api::events::v1::Event;
    let (client, _) = start().await;
    let view: Api<Event> = Api::namespaced(client.clone(), "default");
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), "default");
    let mut watch = view
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let regarding = |name: &str| ObjectReference {
        kind: Some("DisaggregatedSet".into()),
        name: Some(name.into()),
        namespace: Some("default".into()),
        uid: Some(format!("uid-{name}")),
        ..Default::default()
    };
    for (name, set) in [("e1", "llm"), ("e2", "other")] {
        let e: Event = serde_json::from_value(json!({
            "metadata": {"name": name},
            "eventTime": "2026-12-02T00:00:00.000000Z",
            "reason": "CreatedChild", "note": format!("created a child of {set}"), "type": "Normal",
            "action": "Rollout", "reportingController": "disaggregatedset-operator",
            "reportingInstance": "a", "regarding": regarding(set),
        }))
        .unwrap();
        view.create(&PostParams::default(), &e).await.unwrap();
    }
    // Read back through core v1: the same objects, in core's field names.
    let listed = core.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(listed.len(), 2);
    let e1 = listed
        .iter()
        .find(|e| e.metadata.name.as_deref() == Some("e1"))
        .unwrap();
    assert_eq!(e1.message.as_deref(), Some("created a child of llm"));
    assert_eq!(e1.involved_object.name.as_deref(), Some("llm"));
    assert_eq!(
        e1.reporting_component.as_deref(),
        Some("disaggregatedset-operator")
    );
    // kubectl describe's selector.
    let described = core
        .list(&ListParams::default().fields(
            "involvedObject.name=llm,involvedObject.namespace=default,involvedObject.kind=DisaggregatedSet,involvedObject.uid=uid-llm",
        ))
        .await
        .unwrap()
        .items;
    assert_eq!(described.len(), 1);
    let err = core
        .list(&ListParams::default().fields("note=x"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("field label not supported: note"),
        "{err}"
    );

    // The view: patched and read in its own names; its watch saw the creates.
    view.patch(
        "e1",
        &PatchParams::default(),
        &Patch::Merge(json!({"note": "updated", "series": {"count": 2, "lastObservedTime": "2026-12-02T00:00:01.000000Z"}})),
    )
    .await
    .unwrap();
    let e1 = view.get("e1").await.unwrap();
    assert_eq!(e1.note.as_deref(), Some("updated"));
    assert_eq!(e1.regarding.and_then(|r| r.name).as_deref(), Some("llm"));
    assert_eq!(
        core.get("e1").await.unwrap().message.as_deref(),
        Some("updated")
    );
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), watch.try_next()).await {
            Ok(Ok(Some(WatchEvent::Added(e) | WatchEvent::Modified(e)))) => {
                seen.push(e.note.unwrap_or_default())
            }
            Ok(Ok(Some(_))) => {}
            other => panic!("the view's watch ended: {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            "created a child of llm",
            "created a child of other",
            "updated"
        ]
    );
}

/// kube-sim answers JSON: to a client that accepts protobuf or JSON (as
/// kubectl and client-go ask) it answers JSON, and to one that accepts
/// protobuf only it answers 406, as a server does for a media type it
/// cannot produce, rather than a body the client cannot read.
#[tokio::test]
async fn answers_json_and_refuses_a_client_that_accepts_only_protobuf() {
    let (client, _) = start().await;
    let get = |accept: &'static str| {
        let client = client.clone();
        async move {
            let request = axum::http::Request::get("/api/v1/namespaces/default/configmaps")
                .header("Accept", accept)
                .body(Vec::new())
                .unwrap();
            client.request_text(request).await
        }
    };
    let both = get("application/vnd.kubernetes.protobuf, application/json").await;
    assert!(both.unwrap().contains("\"kind\":\"ConfigMapList\""));
    match get("application/vnd.kubernetes.protobuf").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (406, "NotAcceptable")),
        other => panic!("{other:?}"),
    }
}

/// Every watch line names its type before its object, as the real server's
/// do: serde (so kube-rs) reads the object straight into its type only when
/// the type comes first, and otherwise buffers the whole object first.
#[tokio::test]
async fn watch_lines_put_the_type_before_the_object() {
    let (client, store) = start().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv = two_configmaps(&api).await;
    let watch = |query: String| {
        let client = client.clone();
        async move {
            let path = format!(
                "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1&{query}"
            );
            let request = axum::http::Request::get(path).body(Vec::new()).unwrap();
            client.request_text(request).await.unwrap()
        }
    };
    // From a version (then a bookmark at the timeout), from the start, and
    // from a compacted version.
    let resumed = watch(format!("resourceVersion={rv}&allowWatchBookmarks=true")).await;
    let listed = watch("resourceVersion=0".into()).await;
    store.compact();
    let expired = watch(format!("resourceVersion={rv}")).await;
    let lines: Vec<&str> = resumed.lines().chain(listed.lines()).collect();
    assert!(lines.len() >= 3, "{lines:?}");
    for line in lines {
        assert!(
            line.starts_with(r#"{"type":""#) && line.contains(r#"","object":{"#),
            "{line}"
        );
    }
    assert!(
        expired.starts_with(r#"{"type":"ERROR","object":{"#),
        "{expired}"
    );
}
