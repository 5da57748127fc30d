//! `disagg dev` as a user runs it: `kubectl disagg …` against it, through
//! kubectl's own plugin mechanism (the binary symlinked as `kubectl-disagg`
//! on `PATH`), and `--prometheus`.

use super::common::repo;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Dev {
    process: Child,
    kubeconfig: PathBuf,
    /// Holds `kubectl-disagg`, first on `PATH`.
    bin: PathBuf,
    dir: PathBuf,
}

impl Drop for Dev {
    /// Stops `disagg dev` as Ctrl-C would (SIGTERM; SIGKILL only if it is
    /// still running 10 s later), so that it stops what it started: a
    /// SIGKILL left its Prometheus running after every test run.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.process.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.process.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Dev {
    /// `disagg dev --apply APPLY EXTRA…`, once it has printed its first
    /// `lines` lines (returned): the first says the API server is up.
    fn start(name: &str, apply: &Path, extra: &[&str], lines: usize) -> (Dev, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("disagg-{name}-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_disagg"), bin.join("kubectl-disagg"))
            .unwrap();
        let kubeconfig = dir.join("kubeconfig");
        let mut process = Command::new(env!("CARGO_BIN_EXE_disagg"))
            .arg("dev")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--apply")
            .arg(apply)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for its first lines: the API server is up and the kubeconfig written.
        let mut stdout = BufReader::new(process.stdout.take().unwrap());
        let said: Vec<String> = (0..lines)
            .map(|_| {
                let mut line = String::new();
                stdout.read_line(&mut line).unwrap();
                line
            })
            .collect();
        assert!(
            said[0].contains("API server on"),
            "disagg dev said: {said:?}"
        );
        // Keep reading its live table, so that it never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let dev = Dev {
            process,
            kubeconfig,
            bin,
            dir,
        };
        (dev, said)
    }

    /// `kubectl ARGS` with the dev kubeconfig; its stdout, or a panic with stderr.
    fn kubectl(&self, args: &[&str]) -> String {
        let path = format!(
            "{}:{}",
            self.bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", path)
            .env("USER", "alice")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn set(&self, name: &str) -> Value {
        serde_json::from_str(&self.kubectl(&["get", "disaggregatedset", name, "-o", "json"]))
            .unwrap()
    }

    fn until(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let set = self.set(name);
            if done(&set) {
                return set;
            }
            assert!(Instant::now() < deadline, "{what}: not reached: {set:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn condition<'a>(set: &'a Value, type_: &str) -> Option<&'a Value> {
    set["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn is(set: &Value, type_: &str, status: &str) -> bool {
    condition(set, type_).is_some_and(|c| c["status"] == status)
}

#[test]
fn every_kubectl_verb_works_against_disagg_dev() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: kubectl is not installed");
        return;
    }
    let (dev, _) = Dev::start("kubectl", &repo("examples/vllm-pd.yaml"), &[], 1);
    let name = "llama-pd";
    let first = dev.until(name, "Available", |s| is(s, "Available", "True"));
    let first_revision = first["status"]["updateRevision"]
        .as_str()
        .unwrap()
        .to_string();

    // status: the per-role table.
    let table = dev.kubectl(&["disagg", "status", name]);
    assert!(table.contains(&format!("{first_revision}:2/2")), "{table}");
    assert!(table.contains(&format!("{first_revision}:4/4")), "{table}");

    // plan: a new image behind the rollout-gate, before it is applied.
    let mut next: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("examples/vllm-pd.yaml")).unwrap())
            .unwrap();
    next["spec"]["roles"][0]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"]
        [0]["image"] = "vllm/vllm-openai:v0.12.0".into();
    next["spec"]["plugins"] = serde_json::json!([{"name": "rollout-gate", "config": {"requireApproval": true, "recheckSeconds": 1}}]);
    let file = dev.dir.join("next.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&next).unwrap()).unwrap();
    let file = file.display().to_string();
    let plan = dev.kubectl(&["disagg", "plan", "-f", &file]);
    assert!(
        plan.contains(&format!("rolls out from {first_revision} to ")),
        "{plan}"
    );
    assert!(plan.contains("steps (slice 0"), "{plan}");
    assert!(plan.contains("4/4: prefill 0/2, decode 0/4"), "{plan}");
    let planned = plan.split_whitespace().nth(2).unwrap().to_string();

    // Applied, it is that revision, and the gate holds step 1.
    dev.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &file]);
    let held = dev.until(name, "held at step 1", |s| is(s, "RolloutHeld", "True"));
    assert_eq!(held["status"]["updateRevision"], planned.as_str());

    // approve: exactly the held step goes through.
    let out = dev.kubectl(&["disagg", "approve", name]);
    assert!(out.contains("approved step 1 of 4"), "{out}");
    dev.until(name, "step 2 held", |s| {
        s["status"]["rollout"]["holdReason"]
            .as_str()
            .is_some_and(|r| r.contains("step 2"))
    });

    // pause: the set says who paused it, and why; approving does not move it.
    dev.kubectl(&["disagg", "pause", name, "--reason", "maintenance"]);
    dev.kubectl(&["disagg", "approve", name]);
    let paused = dev.until(name, "paused", |s| {
        s["status"]["rollout"]["heldBy"] == "paused"
    });
    assert_eq!(
        paused["status"]["rollout"]["holdReason"],
        "by alice: maintenance"
    );
    assert_eq!(paused["status"]["rollout"]["step"], 1);

    // abort: back at the first revision, the set says who and why.
    dev.kubectl(&["disagg", "abort", name, "--reason", "TTFT regressed"]);
    let aborted = dev.until(name, "rolled back", |s| {
        is(s, "RolloutAborted", "True") && is(s, "Available", "True")
    });
    let message = condition(&aborted, "RolloutAborted").unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("by alice: TTFT regressed"), "{message}");
    let table = dev.kubectl(&["disagg", "status", name]);
    assert!(
        table.contains("aborted by alice: TTFT regressed"),
        "{table}"
    );
    assert!(
        !table.contains(&planned),
        "no child of the aborted revision: {table}"
    );

    // resume: both annotations go; the rollout starts again, held at step 1.
    dev.kubectl(&["disagg", "resume", name]);
    let resumed = dev.until(name, "resumed", |s| {
        condition(s, "RolloutAborted").is_none() && is(s, "RolloutHeld", "True")
    });
    let annotations = &resumed["metadata"]["annotations"];
    assert!(annotations.get("disaggregatedset.x-k8s.io/abort").is_none());
    assert!(
        annotations
            .get("disaggregatedset.x-k8s.io/paused")
            .is_none()
    );

    // A verb on a set that does not exist says so.
    let out = Command::new(dev.bin.join("kubectl-disagg"))
        .args(["status", "nope"])
        .env("KUBECONFIG", &dev.kubeconfig)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("DisaggregatedSet default/nope not found")
    );
}

/// `disagg dev --prometheus`: a local Prometheus scrapes the simulated
/// servers, and the admin endpoint steers them.
#[test]
fn disagg_dev_starts_a_prometheus_that_scrapes_the_simulated_servers() {
    if !super::harness::prometheus_installed() {
        return;
    }
    let (dev, said) = Dev::start(
        "dev-prometheus",
        &repo("examples/vllm-pd.yaml"),
        &["--prometheus"],
        2,
    );
    let url = |line: &str, after: &str| {
        let at = line.find(after).unwrap() + after.len();
        line[at..]
            .split(|c: char| c == ';' || c.is_whitespace())
            .next()
            .unwrap()
            .to_string()
    };
    let api = url(&said[0], "API server on ");
    let prom = url(&said[1], "Prometheus on ");
    ureq::post(&format!("{api}/kube-sim/serving"))
        .send(r#"{"set": "llama-pd", "role": "prefill", "waiting": 24}"#)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = ureq::get(&format!("{prom}/api/v1/query"))
            .query(
                "query",
                "sum(vllm:num_requests_waiting{disaggregatedset=\"llama-pd\",role=\"prefill\"})",
            )
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default();
        if answer.contains("\"24\"") {
            break;
        }
        assert!(Instant::now() < deadline, "never scraped: {answer}");
        std::thread::sleep(Duration::from_millis(250));
    }
    // Stopped, `disagg dev` leaves no Prometheus behind.
    drop(dev);
    assert!(
        ureq::get(&format!("{prom}/-/ready")).call().is_err(),
        "Prometheus still answers after disagg dev stopped"
    );
}
