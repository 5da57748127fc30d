//! The READMEs tell the truth: their offline commands run as written and
//! print what they show. (kubectl steps against a cluster are the e2e suite's.)

mod common;

use common::disagg;
use std::process::Command;
use test_support::repo;

/// The body of the first fenced block after the line containing `marker`.
fn block_after(markdown: &str, marker: &str) -> String {
    let start = markdown
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in the README"));
    let rest = &markdown[start..];
    let open = rest.find("```").expect("a fenced block follows");
    let body = &rest[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("```").expect("the block ends")].to_string()
}

fn readme(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap()
}

/// The worked rollout: the lines the README shows are what render prints,
/// in order ("..." stands for lines left out).
#[test]
fn the_worked_rollout_is_what_render_prints() {
    let text = readme("README.md");
    let marker = "$ cargo run -q -p disagg -- render -f /tmp/new.yaml --revision-from examples/vllm-pd.yaml | grep '^#'";
    let after = &text[text.find(marker).expect("the worked rollout") + marker.len()..];
    let shown: Vec<&str> = after
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    assert!(!shown.is_empty(), "the README shows render's output");
    let new = std::fs::read_to_string(repo("examples/vllm-pd.yaml"))
        .unwrap()
        .replace("v0.11.0", "v0.11.1");
    let new = test_support::temp_file("readme-new.yaml", &new);
    let out = disagg(&[
        "render",
        "-f",
        new.to_str().unwrap(),
        "--revision-from",
        repo("examples/vllm-pd.yaml").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let mut printed = printed.lines().filter(|l| l.starts_with('#'));
    for line in shown.iter().filter(|l| **l != "...") {
        assert!(
            printed.any(|p| p == *line),
            "the README shows {line:?}, which render does not print (in that order)"
        );
    }
}

/// Every `render` of a repository file the READMEs show runs and prints children.
#[test]
fn the_render_commands_shown_run() {
    let components = ["role-profile", "ratio-scaler", "rollout-gate"]
        .map(|n| format!("{n}={}", common::component(n).display()));
    let cases: [Vec<String>; 2] = [
        // examples/README.md
        vec![
            "render".into(),
            "-f".into(),
            "examples/sglang-pd.yaml".into(),
        ],
        // README.md, "Default plugins"
        [
            vec![
                "render".into(),
                "-f".into(),
                "examples/vllm-pd-plugins.yaml".into(),
            ],
            components
                .iter()
                .flat_map(|c| ["--plugin".to_string(), c.clone()])
                .collect(),
        ]
        .concat(),
    ];
    assert!(
        readme("examples/README.md")
            .contains("cargo run -p disagg -- render -f examples/sglang-pd.yaml")
    );
    assert!(
        readme("README.md")
            .contains("cargo run -p disagg -- render -f examples/vllm-pd-plugins.yaml")
    );
    for args in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_disagg"))
            .args(&args)
            .current_dir(repo(""))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.matches("kind: LeaderWorkerSet").count() >= 2,
            "{args:?}: {text}"
        );
    }
}

/// The SDK tutorial, followed as written: its `Cargo.toml` and `src/lib.rs`,
/// its build command, then `disagg plugin check` on the component it makes.
#[test]
fn the_sdk_tutorial_builds_a_plugin_the_operator_accepts() {
    let text = readme("guest-sdk/README.md");
    let dir = std::env::temp_dir().join(format!("disagg-tutorial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = block_after(&text, "`Cargo.toml`:").replace(
        "path = \"../guest-sdk\"",
        &format!("path = {:?}", repo("guest-sdk").display().to_string()),
    );
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[package]\nname = \"ticket-gate\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\n\n{manifest}"),
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), block_after(&text, "`src/lib.rs`:")).unwrap();

    let build = block_after(&text, "## 2. Build");
    let build = build
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("the tutorial builds with cargo");
    let (env, args) = build.split_once(" cargo ").unwrap();
    let (key, value) = env.split_once('=').unwrap();
    let status = Command::new(env!("CARGO"))
        .args(args.split_whitespace())
        .env(key, value.trim_matches('"'))
        // Shared across runs, so the tutorial's dependencies build once.
        .env("CARGO_TARGET_DIR", repo("target/tutorial"))
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "the tutorial's build failed: {build}");
    let component = repo("target/tutorial/wasm32-wasip2/release/ticket_gate.wasm");
    assert!(
        text.contains("target/wasm32-wasip2/release/ticket_gate.wasm"),
        "the tutorial names the component it builds"
    );

    let out = disagg(&["plugin", "check", component.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(facts["name"], "ticket-gate");
    assert_eq!(facts["hooks"], serde_json::json!(["gate-step"]));
    let _ = std::fs::remove_dir_all(&dir);
}
