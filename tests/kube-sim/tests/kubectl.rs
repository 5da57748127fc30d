//! The `kube-sim` binary, driven by kubectl through the kubeconfig it writes,
//! with kubectl's default (server-side, strict) validation.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    kubeconfig: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with its own kubeconfig under a directory named for the test.
fn start(test: &str) -> Option<Server> {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: kubectl is not installed");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("kube-sim-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let _ = std::fs::remove_file(&kubeconfig);
    let child = Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args(["--listen", "127.0.0.1:0", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !kubeconfig.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "kube-sim did not write its kubeconfig"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Server { child, kubeconfig })
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "kubectl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kubectl_applies_gets_and_deletes() {
    let Some(server) = start("crud") else { return };
    let k = server.kubeconfig.as_path();
    let manifest = server.kubeconfig.with_file_name("cm.yaml");
    std::fs::write(&manifest, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n  labels: {app: x}\ndata:\n  a: b\n").unwrap();
    let m = manifest.to_str().unwrap();
    assert!(ok(kubectl(k, &["apply", "-f", m])).contains("configmap/demo created"));
    assert!(ok(kubectl(k, &["apply", "-f", m])).contains("configmap/demo unchanged"));
    assert_eq!(
        ok(kubectl(
            k,
            &["get", "cm", "demo", "-o", "jsonpath={.data.a}"]
        )),
        "b"
    );
    assert!(ok(kubectl(k, &["get", "configmaps", "-l", "app=x"])).contains("demo"));
    assert!(ok(kubectl(k, &["version"])).contains("kube-sim"));
    assert!(ok(kubectl(k, &["delete", "cm", "demo"])).contains("deleted"));
    let out = kubectl(k, &["get", "cm", "demo"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NotFound")
            || String::from_utf8_lossy(&out.stderr).contains("not found")
    );
}

/// `kubectl create …` sends the built-in kinds it builds as protobuf: the
/// plugin tutorial's own deploy step among them.
#[test]
fn kubectl_create_sends_protobuf_and_it_is_read() {
    let Some(server) = start("protobuf") else {
        return;
    };
    let k = server.kubeconfig.as_path();
    ok(kubectl(k, &["create", "namespace", "team-a"]));
    let wasm = server.kubeconfig.with_file_name("plugin.wasm");
    std::fs::write(&wasm, [0u8, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 0xff]).unwrap();
    let from_file = format!("--from-file=plugin.wasm={}", wasm.display());
    ok(kubectl(
        k,
        &[
            "create",
            "configmap",
            "gate",
            "-n",
            "team-a",
            "--from-literal=a=b",
            "--from-literal=empty=",
            &from_file,
        ],
    ));
    ok(kubectl(
        k,
        &[
            "create",
            "secret",
            "generic",
            "token",
            "-n",
            "team-a",
            "--from-literal=k=v",
        ],
    ));
    ok(kubectl(
        k,
        &["create", "serviceaccount", "robot", "-n", "team-a"],
    ));
    let get = |args: &[&str]| ok(kubectl(k, args));
    assert_eq!(
        get(&["get", "ns", "team-a", "-o", "jsonpath={.metadata.name}"]),
        "team-a"
    );
    assert_eq!(
        get(&[
            "get",
            "cm",
            "gate",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.a}"
        ]),
        "b"
    );
    // An empty value is data, not an unset field.
    let cm: serde_json::Value =
        serde_json::from_str(&get(&["get", "cm", "gate", "-n", "team-a", "-o", "json"])).unwrap();
    assert_eq!(cm["data"]["empty"], "", "{cm}");
    // Not UTF-8: kubectl puts it in binaryData, and it arrives byte for byte.
    assert_eq!(
        get(&[
            "get",
            "cm",
            "gate",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.binaryData.plugin\\.wasm}"
        ]),
        "AGFzbQEAAAD/"
    );
    assert_eq!(
        get(&[
            "get",
            "secret",
            "token",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.k}"
        ]),
        "dg=="
    );
    assert!(get(&["get", "sa", "-n", "team-a"]).contains("robot"));
}

/// The real install, rehearsed: `kubectl apply -k deploy/` (client-side and
/// server-side) works, also after another manager applied the same CRDs
/// (as `disagg dev` does) — the same values are shared, not a conflict.
#[test]
fn kubectl_apply_k_deploy_works() {
    let Some(server) = start("deploy") else {
        return;
    };
    let k = server.kubeconfig.as_path();
    let crds = repo("deploy/crds");
    ok(kubectl(
        k,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "disagg-dev",
            "-f",
            &crds,
        ],
    ));
    assert!(
        ok(kubectl(k, &["apply", "--server-side", "-f", &crds])).contains("serverside-applied")
    );
    let deploy = repo("deploy");
    let out = ok(kubectl(k, &["apply", "-k", &deploy]));
    for made in [
        "serviceaccount/disaggregatedset-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/disaggregatedset-operator",
        "deployment.apps/disaggregatedset-operator",
        "poddisruptionbudget.policy/disaggregatedset-operator",
        "configmap/role-profile",
    ] {
        assert!(out.contains(made), "{made}: {out}");
    }
    assert!(
        ok(kubectl(k, &["apply", "--server-side", "-k", &deploy])).contains("serverside-applied")
    );
    let deployments = ok(kubectl(k, &["get", "deployments", "-n", "lws-system"]));
    assert!(
        deployments.contains("disaggregatedset-operator"),
        "{deployments}"
    );
}

/// An Event written to events.k8s.io/v1 (as the operator's recorder does)
/// is what `kubectl get events` and `kubectl describe` show.
#[test]
fn kubectl_shows_events_written_to_either_group() {
    let Some(server) = start("events") else {
        return;
    };
    let k = server.kubeconfig.as_path();
    let cm = server.kubeconfig.with_file_name("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n",
    )
    .unwrap();
    ok(kubectl(k, &["apply", "-f", cm.to_str().unwrap()]));
    let uid = ok(kubectl(
        k,
        &["get", "cm", "demo", "-o", "jsonpath={.metadata.uid}"],
    ));
    let event = server.kubeconfig.with_file_name("event.yaml");
    std::fs::write(
        &event,
        format!("apiVersion: events.k8s.io/v1\nkind: Event\nmetadata:\n  name: demo.1\n  namespace: default\neventTime: \"2026-12-02T00:00:00.000000Z\"\nreason: Tested\ntype: Normal\naction: Test\nnote: seen through both groups\nreportingController: tester\nreportingInstance: a\nregarding:\n  kind: ConfigMap\n  apiVersion: v1\n  name: demo\n  namespace: default\n  uid: {uid}\n"),
    )
    .unwrap();
    ok(kubectl(k, &["create", "-f", event.to_str().unwrap()]));
    let events = ok(kubectl(k, &["get", "events"]));
    assert!(
        events.contains("Tested") && events.contains("seen through both groups"),
        "{events}"
    );
    let described = ok(kubectl(k, &["describe", "cm", "demo"]));
    assert!(
        described.contains("seen through both groups"),
        "{described}"
    );
}

#[test]
fn kubectl_scales_a_custom_resource_through_its_scale_subresource() {
    let Some(server) = start("scale") else { return };
    let k = server.kubeconfig.as_path();
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/crds/disaggregatedset.x-k8s.io.yaml");
    ok(kubectl(k, &["apply", "-f", crds.to_str().unwrap()]));
    let scaler = server.kubeconfig.with_file_name("scaler.yaml");
    std::fs::write(&scaler, "apiVersion: disaggregatedset.x-k8s.io/v1\nkind: DisaggregatedSetRoleScaler\nmetadata:\n  name: llm-decode\nspec:\n  replicas: 1\n").unwrap();
    ok(kubectl(k, &["apply", "-f", scaler.to_str().unwrap()]));
    assert!(ok(kubectl(k, &["scale", "dsrs/llm-decode", "--replicas=4"])).contains("scaled"));
    assert_eq!(
        ok(kubectl(
            k,
            &[
                "get",
                "dsrs",
                "llm-decode",
                "-o",
                "jsonpath={.spec.replicas}"
            ]
        )),
        "4"
    );
    // As the real server records it (checked against ../shared/realapi): the
    // scale write is kubectl's Update of the `scale` subresource.
    assert!(
        ok(kubectl(
            k,
            &[
                "get",
                "dsrs",
                "llm-decode",
                "-o",
                "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation}/{.subresource} {end}"
            ]
        ))
        .contains("kubectl/Update/scale "),
    );

    // The LeaderWorkerSet CRD `disagg dev` serves (derived from the operator's
    // types) scales the same way, and its schema checks what is written.
    use kube::CustomResourceExt;
    let lws_crd = server.kubeconfig.with_file_name("lws-crd.yaml");
    let crd = disagg_api::lws::LeaderWorkerSet::crd();
    std::fs::write(&lws_crd, serde_yaml_ng::to_string(&crd).unwrap()).unwrap();
    ok(kubectl(
        k,
        &["apply", "--server-side", "-f", lws_crd.to_str().unwrap()],
    ));
    let set: disagg_api::set::DisaggregatedSet =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    let mut lws = disagg_core::render::render_child(&set, &set.spec.roles[0], 0, "abcd1234", 1);
    lws.metadata.namespace = None;
    lws.metadata.owner_references = None;
    let lws_file = server.kubeconfig.with_file_name("lws.yaml");
    std::fs::write(&lws_file, serde_yaml_ng::to_string(&lws).unwrap()).unwrap();
    ok(kubectl(
        k,
        &["apply", "--server-side", "-f", lws_file.to_str().unwrap()],
    ));
    let name = lws.metadata.name.clone().unwrap();
    assert!(ok(kubectl(k, &["scale", "lws", &name, "--replicas=3"])).contains("scaled"));
    assert_eq!(
        ok(kubectl(
            k,
            &["get", "lws", &name, "-o", "jsonpath={.spec.replicas}"]
        )),
        "3"
    );
    // With a schema, kubectl's strict validation refuses what LWS does not know.
    let bogus = server.kubeconfig.with_file_name("bogus.yaml");
    let text =
        serde_yaml_ng::to_string(&lws)
            .unwrap()
            .replacen("\nspec:\n", "\nspec:\n  bogus: 1\n", 1);
    std::fs::write(&bogus, text).unwrap();
    let out = kubectl(
        k,
        &["apply", "--server-side", "-f", bogus.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("spec.bogus"), "{err}");
}

/// Repository and shared paths as command-line arguments.
fn repo(path: &str) -> String {
    test_support::repo(path).display().to_string()
}

fn shared(path: &str) -> String {
    test_support::shared(path).display().to_string()
}

/// Waits for `kubectl get` to print `wanted` in the column `column` of `name`'s row.
fn wait_for_cell(k: &Path, args: &[&str], name: &str, column: &str, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let table = ok(kubectl(k, args));
        let mut lines = table.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let at = header
            .iter()
            .position(|h| *h == column)
            .unwrap_or_else(|| panic!("no column {column} in {header:?}"));
        let cell = lines
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.first() == Some(&name))
            .and_then(|cells| cells.get(at).map(|c| c.to_string()));
        if cell.as_deref() == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: {column} is {cell:?}, not {wanted}:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kubectl_drives_custom_resources_server_side() {
    let Some(server) = start("ssa") else { return };
    let k = server.kubeconfig.as_path();
    let file = |name: &str, text: &str| {
        let path = server.kubeconfig.with_file_name(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    // CRDs and a set, applied server-side.
    let lws_crd = shared("upstream/leaderworkerset.x-k8s.io_leaderworkersets.yaml");
    assert!(
        ok(kubectl(k, &["apply", "--server-side", "-f", &lws_crd])).contains("serverside-applied")
    );
    ok(kubectl(
        k,
        &["apply", "--server-side", "-f", &repo("deploy/crds")],
    ));
    ok(kubectl(
        k,
        &[
            "apply",
            "--server-side",
            "-f",
            &repo("examples/vllm-pd.yaml"),
        ],
    ));
    // Re-applying with another field manager and a different value conflicts.
    let set = std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap();
    let changed = file(
        "changed.yaml",
        &set.replacen("replicas: 2", "replicas: 5", 1),
    );
    assert_ne!(set, std::fs::read_to_string(&changed).unwrap());
    let out = kubectl(
        k,
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &changed,
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("conflict"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(kubectl(
        k,
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            &changed,
        ],
    ));

    // Strict validation: an unknown field is refused, naming it.
    let unknown = file(
        "unknown.yaml",
        &set.replacen("spec:\n", "spec:\n  surprise: 1\n", 1),
    );
    let out = kubectl(k, &["apply", "--server-side", "-f", &unknown]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("surprise"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Printer columns; status through the status subresource.
    let uid = ok(kubectl(
        k,
        &[
            "get",
            "disaggregatedsets",
            "llama-pd",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    ));
    ok(kubectl(
        k,
        &[
            "patch",
            "disaggregatedset",
            "llama-pd",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"rolesReady":"prefill=1/2","updateRevision":"abc"}}"#,
        ],
    ));
    wait_for_cell(
        k,
        &["get", "disaggregatedsets"],
        "llama-pd",
        "ROLES",
        "prefill=1/2",
    );
    wait_for_cell(
        k,
        &["get", "disaggregatedsets"],
        "llama-pd",
        "REVISION",
        "abc",
    );

    // An LWS owned by the set: the LWS simulator makes it ready; `get -w` sees it scale.
    let lws = file(
        "lws.yaml",
        &format!(
            "apiVersion: leaderworkerset.x-k8s.io/v1\nkind: LeaderWorkerSet\nmetadata:\n  name: llama-pd-decode\n  ownerReferences:\n  - apiVersion: disaggregatedset.x-k8s.io/v1\n    kind: DisaggregatedSet\n    name: llama-pd\n    uid: {uid}\n    controller: true\n    blockOwnerDeletion: true\nspec:\n  replicas: 2\n  leaderWorkerTemplate:\n    size: 1\n    workerTemplate:\n      spec:\n        containers:\n        - name: vllm\n          image: vllm/vllm-openai\n"
        ),
    );
    ok(kubectl(k, &["apply", "--server-side", "-f", &lws]));
    wait_for_cell(
        k,
        &["get", "leaderworkersets"],
        "llama-pd-decode",
        "READY",
        "2",
    );
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(k)
        .args(["get", "leaderworkersets", "-w"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ok(kubectl(
            k,
            &["scale", "leaderworkerset/llama-pd-decode", "--replicas=3"]
        ))
        .contains("scaled")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(remaining) {
            Ok(line) => {
                let cells: Vec<String> = line.split_whitespace().map(str::to_string).collect();
                seen.push(line);
                // NAME READY DESIRED UP-TO-DATE AGE
                if cells.first().map(String::as_str) == Some("llama-pd-decode")
                    && cells.get(1).map(String::as_str) == Some("3")
                {
                    break;
                }
            }
            Err(_) => panic!("kubectl get -w never showed 3 ready groups: {seen:?}"),
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();

    // Deleting the set in the foreground takes its LWS with it, then the set.
    ok(kubectl(
        k,
        &[
            "delete",
            "disaggregatedset",
            "llama-pd",
            "--cascade=foreground",
        ],
    ));
    let left = ok(kubectl(
        k,
        &["get", "leaderworkersets,disaggregatedsets", "-o", "name"],
    ));
    assert_eq!(left.trim(), "", "left behind: {left}");
}
