//! Shared helpers for integration tests: paths, and the guest components,
//! built once per test binary from this repository's own sources.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub use test_support::{repo, shared};

/// Runs the `disagg` binary of this build, as a user would.
pub fn disagg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_disagg"))
        .args(args)
        .output()
        .expect("run disagg")
}

/// `disagg plugin run FILE --hook HOOK ARGS...`.
pub fn plugin_run(file: &std::path::Path, hook: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["plugin", "run", file.to_str().unwrap(), "--hook", hook];
    all.extend(args);
    disagg(&all)
}

/// Every guest crate of the workspace, built for wasm32-wasip2 with the `plugin` profile.
pub const GUESTS: &[&str] = &[
    "role-profile",
    "ratio-scaler",
    "rollout-gate",
    "slo-gate",
    "load-scaler",
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

/// A component made by hand from a core module in WAT, for what no guest
/// toolchain writes by itself: several memories, a huge function. It
/// implements the 0.1.0 contract's ABI directly (so it also exercises the
/// host's serving of 0.1.0); `patch-role` runs `patch_body`, then answers
/// `ok(none)`.
pub fn handmade_component(extra_memory: bool, patch_body: &str, extra_funcs: &str) -> Vec<u8> {
    let second = if extra_memory { "(memory $m1 1)" } else { "" };
    let module = format!(
        r#"(module
  (memory $m0 (export "memory") 1)
  {second}
  (global $heap (mut i32) (i32.const 4096))
  (data (memory $m0) (i32.const 100) "handmade")
  (data (memory $m0) (i32.const 200) "0.0.0")
  (data (memory $m0) (i32.const 300) "\00")
  (data (memory $m0) (i32.const 400) "\64\00\00\00\08\00\00\00\c8\00\00\00\05\00\00\00\2c\01\00\00\01\00\00\00")
  (data (memory $m0) (i32.const 500) "\00\00\00\00\00\00\00\00\00\00\00\00")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and
      (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
      (i32.xor (i32.sub (local.get 2) (i32.const 1)) (i32.const -1))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (global.get $heap) (i32.mul (memory.size $m0) (i32.const 65536))))
        (if (i32.eq (memory.grow $m0 (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    (local.get $p))
  (func (export "disaggregatedset:plugin/hooks@0.1.0#describe") (result i32) (i32.const 400))
  (func (export "disaggregatedset:plugin/hooks@0.1.0#patch-role")
    (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    {patch_body}
    (i32.const 500))
  (func (export "disaggregatedset:plugin/hooks@0.1.0#scale-role")
    (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32) unreachable)
  (func (export "disaggregatedset:plugin/hooks@0.1.0#gate-step") (param i32) (result i32) unreachable)
  (func (export "disaggregatedset:plugin/hooks@0.1.0#validate") (param i32 i32 i32 i32) (result i32) unreachable)
  {extra_funcs}
)"#
    );
    let mut core = wat::parse_str(&module).unwrap();
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve.push_dir(repo("wit/0.1.0")).unwrap();
    let world = resolve.select_world(&[pkg], Some("plugin")).unwrap();
    wit_component::embed_component_metadata(
        &mut core,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .unwrap();
    wit_component::ComponentEncoder::default()
        .module(&core)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}

/// A hand-made component that is within the default size limit but takes
/// about 2 s to compile (one huge function); `patch-role` answers `ok(none)`.
pub fn compile_bomb() -> Vec<u8> {
    compile_bomb_of(1)
}

/// A compile bomb of `functions` huge functions (3.8 MB and about 2 s of
/// compiling each; one function may not be much bigger: Wasm caps a body
/// at 7.6 MB); `patch-role` answers `ok(none)`.
pub fn compile_bomb_of(functions: usize) -> Vec<u8> {
    let body: String =
        "(local.set 0 (i32.mul (local.get 0) (i32.add (local.get 0) (i32.const 7))))\n"
            .repeat(380_000);
    let funcs: String = (0..functions)
        .map(|i| format!("(func $bomb{i} (param i32) {body})\n"))
        .collect();
    handmade_component(false, "", &funcs)
}

/// A `gate-step` request for set `llm` (revision abcd1234, slice 0) taking
/// step 2 of 4 with a ready prefill role going 2/1 → 2/2; tests change what
/// they are about with struct update syntax.
pub fn gate_request(
    annotations: &[(&str, &str)],
    config: serde_json::Value,
) -> disagg::plugin::GateRequest {
    disagg::plugin::GateRequest {
        set_name: "llm".into(),
        namespace: "default".into(),
        labels: vec![],
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        revision: "abcd1234".into(),
        old_revision: "0ld0ld00".into(),
        slice: 0,
        step: 2,
        total_steps: 4,
        roles: vec![disagg::plugin::RoleStep {
            name: "prefill".into(),
            old_now: 2,
            old_next: 2,
            new_now: 1,
            new_next: 2,
            target: 3,
            ready: true,
        }],
        held_for_ms: 0,
        now_ms: 0,
        config: config.to_string(),
        signals: vec![],
    }
}
