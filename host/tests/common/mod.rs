//! Shared helpers for integration tests: paths, and the guest components,
//! built once per test binary from this repository's own sources.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

pub fn shared(path: &str) -> PathBuf {
    match std::env::var_os("DISAGG_SHARED") {
        Some(dir) => PathBuf::from(dir).join(path),
        None => repo("../shared").join(path),
    }
}

/// Every guest crate of the workspace, built for wasm32-wasip2 with the `plugin` profile.
pub const GUESTS: &[&str] = &[
    "role-profile",
    "ratio-scaler",
    "rollout-gate",
    "rust-gate",
    "hostile",
    "wrong-version",
    "bad-import",
];

/// The path of a guest component, building all of them on first use. A
/// separate target directory keeps this nested cargo off the outer one's lock.
pub fn component(crate_name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let target = repo("target/guests");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(repo(""))
            .args([
                "build",
                "--quiet",
                "--profile",
                "plugin",
                "--target",
                "wasm32-wasip2",
            ])
            .arg("--target-dir")
            .arg(&target);
        for g in GUESTS {
            cmd.args(["-p", g]);
        }
        let status = cmd
            .status()
            .expect("run cargo to build the guest components");
        assert!(status.success(), "building the guest components failed");
        target.join("wasm32-wasip2/plugin")
    });
    dir.join(format!("{}.wasm", crate_name.replace('-', "_")))
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `component` with a custom section appended: the same behaviour under a
/// new digest (a stand-in for "a new build of the plugin"), `payload` bytes larger.
pub fn with_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(payload);
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Installs our CRDs and upstream's LeaderWorkerSet CRD, as a cluster for
/// the operator needs them.
pub async fn install_crds(client: &kube::Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    for file in [
        repo("deploy/crds/disaggregatedset.x-k8s.io.yaml"),
        shared("upstream/leaderworkerset.x-k8s.io_leaderworkersets.yaml"),
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc).unwrap();
            crds.create(&Default::default(), &crd).await.unwrap();
        }
    }
}
