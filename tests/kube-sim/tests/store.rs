use kube_sim::selector::Selector;
use kube_sim::store::{EventType, Filter, ResourceId, ResourceInfo, Store};
use serde_json::{Value, json};

fn setup() -> (Store, ResourceId) {
    let store = Store::new(1000);
    let cm = ResourceId::new("", "v1", "configmaps");
    store.register(
        cm.clone(),
        ResourceInfo {
            kind: "ConfigMap".into(),
            namespaced: true,
            status_subresource: false,
            short_names: vec![],
        },
    );
    let lws = ResourceId::new("leaderworkerset.x-k8s.io", "v1", "leaderworkersets");
    store.register(
        lws,
        ResourceInfo {
            kind: "LeaderWorkerSet".into(),
            namespaced: true,
            status_subresource: true,
            short_names: vec![],
        },
    );
    (store, cm)
}

fn lws() -> ResourceId {
    ResourceId::new("leaderworkerset.x-k8s.io", "v1", "leaderworkersets")
}

/// The names of a page's objects, in order.
fn names(p: &kube_sim::store::Page) -> Vec<String> {
    p.items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn create_sets_system_metadata_and_refuses_duplicates() {
    let (s, cm) = setup();
    let a = s
        .create(
            &cm,
            "ns",
            json!({"metadata": {"name": "a", "uid": "forged"}, "data": {"k": "v"}}),
        )
        .unwrap();
    assert_eq!(a["metadata"]["namespace"], "ns");
    assert_eq!(a["metadata"]["generation"], 1);
    assert_ne!(a["metadata"]["uid"], "forged");
    assert!(
        a["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let err = s
        .create(&cm, "ns", json!({"metadata": {"name": "a"}}))
        .unwrap_err();
    assert_eq!((err.code, err.reason), (409, "AlreadyExists"));
    let err = s.create(&cm, "ns", json!({"metadata": {}})).unwrap_err();
    assert_eq!(err.code, 422);
    let g = s
        .create(&cm, "ns", json!({"metadata": {"generateName": "gen-"}}))
        .unwrap();
    assert!(g["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
    assert_eq!(s.get(&cm, "other", "a").unwrap_err().code, 404);
    let err = s
        .get(&ResourceId::new("x", "v1", "nothings"), "ns", "a")
        .unwrap_err();
    assert_eq!(err.code, 404);
}

#[test]
fn updates_are_optimistic_and_versions_monotonic() {
    let (s, cm) = setup();
    let a = s
        .create(
            &cm,
            "ns",
            json!({"metadata": {"name": "a"}, "data": {"k": "1"}}),
        )
        .unwrap();
    let mut b = a.clone();
    b["data"]["k"] = json!("2");
    let b = s.update(&cm, "ns", "a", b, false).unwrap();
    assert!(rv(&b) > rv(&a));
    // Writing from the stale version conflicts.
    let mut stale = a.clone();
    stale["data"]["k"] = json!("3");
    let err = s.update(&cm, "ns", "a", stale, false).unwrap_err();
    assert_eq!((err.code, err.reason), (409, "Conflict"));
    // Without a resourceVersion the write is unconditional.
    let mut blind = b.clone();
    blind["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    blind["data"]["k"] = json!("4");
    assert_eq!(
        s.update(&cm, "ns", "a", blind, false).unwrap()["data"]["k"],
        "4"
    );
    // A no-op update does not move the version.
    let same = s.get(&cm, "ns", "a").unwrap();
    assert_eq!(
        rv(&s.update(&cm, "ns", "a", same.clone(), false).unwrap()),
        rv(&same)
    );
}

#[test]
fn generation_moves_on_spec_changes_only_and_status_is_separate() {
    let (s, _) = setup();
    let a = s
        .create(
            &lws(),
            "ns",
            json!({"metadata": {"name": "a"}, "spec": {"replicas": 1}}),
        )
        .unwrap();
    let mut st = a.clone();
    st["status"] = json!({"readyReplicas": 1});
    let b = s.update(&lws(), "ns", "a", st.clone(), true).unwrap();
    assert_eq!(
        (
            b["metadata"]["generation"].as_i64(),
            b["status"]["readyReplicas"].as_i64()
        ),
        (Some(1), Some(1))
    );
    // The main endpoint ignores status with a status subresource.
    let mut main = b.clone();
    main["status"] = json!({"readyReplicas": 9});
    main["metadata"]["labels"] = json!({"x": "y"});
    let c = s.update(&lws(), "ns", "a", main, false).unwrap();
    assert_eq!(
        (
            c["metadata"]["generation"].as_i64(),
            c["status"]["readyReplicas"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let mut spec = c.clone();
    spec["spec"]["replicas"] = json!(3);
    assert_eq!(
        s.update(&lws(), "ns", "a", spec, false).unwrap()["metadata"]["generation"],
        2
    );
}

/// The whole-store sweep (what the collector runs when it has missed
/// changes): an object whose owners are all gone goes, and its dependents
/// with it, in one call; one owner left keeps an object; an object being
/// deleted in the foreground holds its dependents' collection and is let go
/// once they are gone.
#[test]
fn a_full_collection_follows_the_ownership_graph() {
    let (s, cm) = setup();
    let owned = |name: &str, owners: &[&str]| {
        let refs: Vec<Value> = owners
            .iter()
            .map(|u| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": u}))
            .collect();
        json!({"metadata": {"name": name, "ownerReferences": refs}})
    };
    let uid = |v: Value| v["metadata"]["uid"].as_str().unwrap().to_string();
    let kept = uid(s
        .create(&cm, "ns", json!({"metadata": {"name": "kept"}}))
        .unwrap());
    let child = uid(s
        .create(&cm, "ns", owned("child", &["no-such-uid"]))
        .unwrap());
    s.create(&cm, "ns", owned("grandchild", &[&child])).unwrap();
    s.create(&cm, "ns", owned("shared", &["no-such-uid", &kept]))
        .unwrap();
    assert_eq!(s.collect_garbage(), 2, "child and grandchild");
    for name in ["child", "grandchild"] {
        assert_eq!(s.get(&cm, "ns", name).unwrap_err().code, 404, "{name}");
    }
    assert!(s.get(&cm, "ns", "shared").is_ok(), "one owner is left");
    assert_eq!(s.collect_garbage(), 0, "nothing more");

    s.delete_foreground(&cm, "ns", "kept", None).unwrap();
    assert_eq!(
        s.collect_garbage(),
        1,
        "shared: its live owner is going in the foreground"
    );
    assert_eq!(
        s.get(&cm, "ns", "kept").unwrap_err().code,
        404,
        "with no dependents left, the foreground deletion finishes"
    );
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let (s, cm) = setup();
    s.create(
        &cm,
        "ns",
        json!({"metadata": {"name": "a", "finalizers": ["x/y"]}}),
    )
    .unwrap();
    let marked = s.delete(&cm, "ns", "a", None).unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let mut cur = s.get(&cm, "ns", "a").unwrap();
    cur["metadata"]["finalizers"] = json!([]);
    s.update(&cm, "ns", "a", cur, false).unwrap();
    assert_eq!(s.get(&cm, "ns", "a").unwrap_err().code, 404);
    s.create(&cm, "ns", json!({"metadata": {"name": "b"}}))
        .unwrap();
    assert_eq!(s.delete(&cm, "ns", "b", Some("1")).unwrap_err().code, 409);
    s.delete(&cm, "ns", "b", None).unwrap();
    assert_eq!(s.delete(&cm, "ns", "b", None).unwrap_err().code, 404);
}

#[test]
fn lists_filter_by_namespace_labels_and_fields_and_paginate() {
    let (s, cm) = setup();
    for (ns, name, role) in [
        ("a", "x1", "prefill"),
        ("a", "x2", "decode"),
        ("b", "x3", "prefill"),
        ("b", "x4", "prefill"),
    ] {
        s.create(
            &cm,
            ns,
            json!({"metadata": {"name": name, "labels": {"role": role}}}),
        )
        .unwrap();
    }
    let all = s.list(&cm, &Filter::default(), 0, None).unwrap();
    assert_eq!(names(&all), ["x1", "x2", "x3", "x4"]);
    assert_eq!(all.resource_version, s.revision());
    let prefill = Filter {
        labels: Selector::parse("role=prefill").unwrap(),
        ..Filter::default()
    };
    assert_eq!(
        names(&s.list(&cm, &prefill, 0, None).unwrap()),
        ["x1", "x3", "x4"]
    );
    let in_b = Filter {
        namespace: Some("b".into()),
        fields: Filter::parse_fields("metadata.name!=x3").unwrap(),
        ..Filter::default()
    };
    assert_eq!(names(&s.list(&cm, &in_b, 0, None).unwrap()), ["x4"]);
    let p1 = s.list(&cm, &prefill, 2, None).unwrap();
    assert_eq!(names(&p1), ["x1", "x3"]);
    let p2 = s
        .list(&cm, &prefill, 2, p1.continue_token.as_deref())
        .unwrap();
    assert_eq!(
        (names(&p2), p2.continue_token),
        (vec!["x4".to_string()], None)
    );
    assert!(Filter::parse_fields("spec.x=1").is_err());
}

#[test]
fn watches_replay_from_a_version_then_follow_and_expire_after_compaction() {
    let (s, cm) = setup();
    let a = s
        .create(&cm, "ns", json!({"metadata": {"name": "a"}}))
        .unwrap();
    let mut a2 = a.clone();
    a2["data"] = json!({"k": "v"});
    s.update(&cm, "ns", "a", a2, false).unwrap();
    s.create(&cm, "other", json!({"metadata": {"name": "b"}}))
        .unwrap();
    let filter = Filter {
        namespace: Some("ns".into()),
        ..Filter::default()
    };
    let (backlog, mut live) = s.watch(&cm, &filter, rv(&a)).unwrap();
    assert_eq!(
        backlog.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventType::Modified]
    );
    s.delete(&cm, "ns", "a", None).unwrap();
    let e = live.try_recv().unwrap();
    assert_eq!(
        (e.kind, e.object["metadata"]["name"].as_str()),
        (EventType::Deleted, Some("a"))
    );
    assert!(e.resource_version > backlog[0].resource_version);
    s.compact();
    let err = s.watch(&cm, &filter, rv(&a)).unwrap_err();
    assert_eq!((err.code, err.reason), (410, "Expired"));
    assert!(s.watch(&cm, &filter, s.revision()).unwrap().0.is_empty());
}

/// A paged list is one read: its later pages show the store as of the first
/// page and carry its version, so a watch from that version sees every change
/// made while the client paged. (Serving each page from the store as it is
/// then, with the version of the moment, lost changes to objects on the
/// pages already read: a kube-rs watcher relisting 1,000 sets under load
/// missed the last status of 6.)
#[test]
fn every_page_of_a_list_is_as_of_its_first_and_a_watch_from_it_misses_nothing() {
    let (s, cm) = setup();
    for name in ["a", "b", "c", "d"] {
        s.create(&cm, "ns", json!({"metadata": {"name": name}}))
            .unwrap();
    }
    let first = s.list(&cm, &Filter::default(), 2, None).unwrap();
    assert_eq!(names(&first), ["a", "b"]);
    assert_eq!(first.remaining, Some(2));
    // Meanwhile: a changes (read already), c changes and d goes (not yet
    // read), e appears.
    for name in ["a", "c"] {
        let mut o = s.get(&cm, "ns", name).unwrap();
        o["data"] = json!({"k": "changed"});
        s.update(&cm, "ns", name, o, false).unwrap();
    }
    s.delete(&cm, "ns", "d", None).unwrap();
    s.create(&cm, "ns", json!({"metadata": {"name": "e"}}))
        .unwrap();
    let second = s
        .list(&cm, &Filter::default(), 2, first.continue_token.as_deref())
        .unwrap();
    assert_eq!(names(&second), ["c", "d"], "as of the first page");
    assert!(second.items[0]["data"].is_null(), "c as it was then");
    assert_eq!(second.resource_version, first.resource_version);
    assert_eq!((second.continue_token, second.remaining), (None, None));
    // The watch from the list's version brings every change since.
    let (backlog, _) = s
        .watch(&cm, &Filter::default(), second.resource_version)
        .unwrap();
    let changes: Vec<_> = backlog
        .iter()
        .map(|e| (e.kind, e.object["metadata"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        changes,
        [
            (EventType::Modified, "a"),
            (EventType::Modified, "c"),
            (EventType::Deleted, "d"),
            (EventType::Added, "e"),
        ]
    );
    // A finished list's token, and one of a list dropped for newer ones,
    // are expired: the client lists again.
    let done = s.list(&cm, &Filter::default(), 2, first.continue_token.as_deref());
    assert_eq!(done.unwrap_err().code, 410);
    let old = s.list(&cm, &Filter::default(), 1, None).unwrap();
    for _ in 0..40 {
        s.list(&cm, &Filter::default(), 1, None).unwrap();
    }
    let dropped = s.list(&cm, &Filter::default(), 1, old.continue_token.as_deref());
    assert_eq!(dropped.unwrap_err().code, 410);
    let bad = s.list(&cm, &Filter::default(), 1, Some("nonsense"));
    assert_eq!(bad.unwrap_err().code, 400);
}
