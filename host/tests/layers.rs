//! The crate graph points one way (`docs/architecture.md`), and each layer
//! keeps out what does not belong in it. Cargo already refuses cycles; this
//! checks what it cannot: which outside crates each layer may link, and that
//! the operator's image (the Dockerfile's build) links no kube-sim.

use std::process::Command;

/// Every crate `package` links in a normal (non-dev) build with `args`.
fn linked(package: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .args(args)
        .current_dir(test_support::repo(""))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn assert_links_none(package: &str, args: &[&str], forbidden: &[&str]) {
    let crates = linked(package, args);
    for f in forbidden {
        assert!(
            !crates.iter().any(|c| c == f),
            "{package} must not link {f}, but does: `cargo tree -p {package} -e normal -i {f}` says why"
        );
    }
}

#[test]
fn each_layer_links_only_what_belongs_in_it() {
    // Types and schema rules: no client, no runtime, nothing above.
    assert_links_none(
        "disagg-api",
        &[],
        &[
            "disagg-core",
            "disagg-plugin",
            "disagg-controller",
            "kube-sim",
            "kube-client",
            "tokio",
            "wasmtime",
        ],
    );
    // The pure core: no I/O of any kind.
    assert_links_none(
        "disagg-core",
        &[],
        &[
            "disagg-plugin",
            "disagg-controller",
            "kube-sim",
            "kube-client",
            "tokio",
            "wasmtime",
            "hyper",
        ],
    );
    // The plugin host: wasmtime, but no Kubernetes client.
    assert_links_none(
        "disagg-plugin",
        &[],
        &["disagg-controller", "kube-sim", "kube-client", "hyper"],
    );
    assert_links_none("disagg-controller", &[], &["kube-sim"]);
}

#[test]
fn the_operator_image_links_no_in_memory_cluster() {
    assert_links_none("disagg", &["--no-default-features"], &["kube-sim"]);
    // The default build (`cargo run -p disagg -- dev`) has it.
    assert!(linked("disagg", &[]).iter().any(|c| c == "kube-sim"));
}
