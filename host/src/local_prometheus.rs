//! A local Prometheus server (the Debian package; `scripts/install-prometheus.sh`)
//! scraping the simulated inference servers every second: what `disagg dev
//! --prometheus` runs, and the signal tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalPrometheus {
    process: Child,
    /// Its base URL, for `--prometheus-url`.
    pub url: String,
    dir: PathBuf,
}

impl Drop for LocalPrometheus {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a `prometheus` binary is on `PATH`.
pub fn installed() -> bool {
    Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl LocalPrometheus {
    /// Starts one scraping `target` every second, with its data in a fresh
    /// directory under `dir`; returns once it answers `/-/ready`.
    pub fn start(dir: PathBuf, target: SocketAddr) -> Result<LocalPrometheus, String> {
        if !installed() {
            return Err(
                "prometheus is not installed: bash scripts/install-prometheus.sh (Debian package prometheus)"
                    .into(),
            );
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: vllm\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let process = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start prometheus: {e}"))?;
        let prometheus = LocalPrometheus {
            process,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = format!("{}/-/ready", prometheus.url);
        while ureq::get(&ready).call().is_err() {
            if Instant::now() > deadline {
                return Err("prometheus did not become ready within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(prometheus)
    }

    /// Stops the server (tests: a Prometheus outage).
    pub fn stop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
