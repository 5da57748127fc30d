//! The `kube-sim` binary, driven by kubectl through the kubeconfig it writes.
//! (kubectl's client-side validation needs OpenAPI, which is not served yet,
//! hence `--validate=false`; kubectl sends built-in kinds it creates itself,
//! e.g. `kubectl create configmap`, as protobuf, which is not decoded yet.)

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
    assert!(
        ok(kubectl(k, &["apply", "--validate=false", "-f", m])).contains("configmap/demo created")
    );
    assert!(
        ok(kubectl(k, &["apply", "--validate=false", "-f", m]))
            .contains("configmap/demo unchanged")
    );
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

#[test]
fn kubectl_scales_a_custom_resource_through_its_scale_subresource() {
    let Some(server) = start("scale") else { return };
    let k = server.kubeconfig.as_path();
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/crds/disaggregatedset.x-k8s.io.yaml");
    ok(kubectl(
        k,
        &["apply", "--validate=false", "-f", crds.to_str().unwrap()],
    ));
    let scaler = server.kubeconfig.with_file_name("scaler.yaml");
    std::fs::write(&scaler, "apiVersion: disaggregatedset.x-k8s.io/v1\nkind: DisaggregatedSetRoleScaler\nmetadata:\n  name: llm-decode\nspec:\n  replicas: 1\n").unwrap();
    ok(kubectl(
        k,
        &["apply", "--validate=false", "-f", scaler.to_str().unwrap()],
    ));
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
}
