//! `disagg`: the DisaggregatedSet operator's one binary.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use disagg::api::crd::crds_yaml;
use disagg::api::set::DisaggregatedSet;
use disagg::core::bindings;
use disagg::input::{InputError, load_plan_cases, load_set};
use disagg::plugin::{Limits, Plugin, Runtime};
use disagg::render;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "disagg",
    version,
    about = "DisaggregatedSet operator and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print our CRDs (DisaggregatedSet, DisaggregatedSetRoleScaler) as YAML.
    Crds,
    /// Compute rollout steps for cases in the format of rollout-vectors.json.
    Plan {
        /// A JSON array of cases; `steps` may be absent.
        file: PathBuf,
    },
    /// Print the child LeaderWorkerSets of a set as a multi-document YAML stream.
    Render {
        /// The DisaggregatedSet manifest.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// An earlier version of the set: also print the rollout from it to FILE, as YAML comments.
        #[arg(long = "revision-from")]
        revision_from: Option<PathBuf>,
        /// A plugin component for the set's bindings, as NAME=FILE.wasm[.gz] (repeatable);
        /// bound plugins not given run the component `deploy/` ships, if there is one.
        #[arg(long = "plugin", value_name = "NAME=FILE")]
        plugins: Vec<String>,
        /// Plugin bindings every set gets, as for `disagg run`; the default is deploy/'s,
        /// so that render gives the revision and children `disagg dev` creates.
        #[arg(long, default_value = disagg::defaults::DEFAULT_PLUGINS)]
        default_plugins: String,
    },
    /// Start an in-memory cluster with the LWS simulator and the operator, apply
    /// manifests, and show a live table of every set until Ctrl-C.
    Dev(DevArgs),
    /// Run the operator against a cluster (in-cluster config, or --kubeconfig / $KUBECONFIG).
    Run(RunArgs),
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A kubeconfig to use instead of the in-cluster configuration or $KUBECONFIG.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The operator's namespace, where plugin ConfigMaps are read.
    #[arg(long, env = "POD_NAMESPACE", default_value = "lws-system")]
    namespace: String,
    /// Load plugins from NAME.wasm[.gz] files in this directory (a mounted ConfigMap volume)
    /// instead of watching ConfigMaps.
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    probe_addr: std::net::SocketAddr,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Lead without a Lease (only when exactly one replica runs).
    #[arg(long)]
    no_leader_election: bool,
    /// How long the leader's Lease lasts without renewal; a standby takes over after it.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// How many sets are reconciled at once; plugin calls run inside reconciles,
    /// so this also bounds how many run at once.
    #[arg(long, env = "DISAGG_CONCURRENCY", default_value_t = disagg::controller::DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// Plugin bindings every set gets, as a YAML or JSON list in the shape of `spec.plugins`
    /// (a set's own binding of the same name replaces a default; `roles: []` turns it off).
    #[arg(long, env = "DISAGG_DEFAULT_PLUGINS", default_value = "[]")]
    default_plugins: String,
    /// The largest plugin component accepted, in MiB after gzip decompression
    /// (a ConfigMap holds 1 MiB; raise this for large components in --plugin-dir).
    #[arg(long, env = "DISAGG_MAX_COMPONENT_MIB", default_value_t = 4)]
    max_component_mib: usize,
    #[command(flatten)]
    signals: SignalArgs,
}

/// Where plugins' signals (`spec.plugins[].signals`) are evaluated.
#[derive(clap::Args)]
struct SignalArgs {
    /// Prometheus' base URL (e.g. http://prometheus.monitoring:9090); without it,
    /// every signal is reported unavailable.
    #[arg(long, env = "DISAGG_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// A file with a bearer token for Prometheus, read for every reconcile.
    #[arg(long, env = "DISAGG_PROMETHEUS_BEARER_TOKEN_FILE")]
    prometheus_bearer_token_file: Option<PathBuf>,
    /// PEM certificates to trust for an https:// Prometheus.
    #[arg(long, env = "DISAGG_PROMETHEUS_CA_FILE")]
    prometheus_ca_file: Option<PathBuf>,
    /// How long one query may take.
    #[arg(long, env = "DISAGG_PROMETHEUS_TIMEOUT_MS", default_value_t = 2000)]
    prometheus_timeout_ms: u64,
    /// How often a set whose bindings declare signals is decided again.
    #[arg(long, env = "DISAGG_SIGNAL_INTERVAL_SECONDS", default_value_t = 15)]
    signal_interval_seconds: u64,
}

impl SignalArgs {
    fn prometheus(&self) -> Option<disagg::controller::prometheus::PrometheusConfig> {
        Some(disagg::controller::prometheus::PrometheusConfig {
            url: self.prometheus_url.clone()?,
            bearer_token_file: self.prometheus_bearer_token_file.clone(),
            ca_file: self.prometheus_ca_file.clone(),
            timeout: std::time::Duration::from_millis(self.prometheus_timeout_ms.max(1)),
        })
    }

    fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.signal_interval_seconds.max(1))
    }
}

#[derive(clap::Args)]
struct DevArgs {
    /// Where to write a kubeconfig for kubectl.
    #[arg(long, default_value = "disagg-dev.kubeconfig")]
    kubeconfig: PathBuf,
    /// A manifest to apply (server-side) once everything runs. Repeatable.
    #[arg(long = "apply", value_name = "FILE")]
    apply: Vec<PathBuf>,
    /// The API server's address (loopback only); port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Plugins for the operator: NAME.wasm[.gz] files in this directory.
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// The upstream LeaderWorkerSet CRD (default: one generated from the operator's LWS type, with its schema and scale subresource).
    #[arg(long)]
    lws_crd: Option<PathBuf>,
    /// How long each simulated LWS group takes to become ready, in milliseconds.
    #[arg(long, default_value_t = 0)]
    group_delay_ms: u64,
    /// Plugin bindings every set gets (as for `disagg run`); the default is deploy/'s.
    #[arg(long, default_value = disagg::defaults::DEFAULT_PLUGINS)]
    default_plugins: String,
    /// Start a local Prometheus (the Debian package; bash scripts/install-prometheus.sh)
    /// scraping the simulated inference servers, and evaluate signals against it.
    #[arg(long)]
    prometheus: bool,
    #[command(flatten)]
    signals: SignalArgs,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load and check a component; print {name, version, world, hooks, sizeBytes, compileMillis} as JSON.
    Check {
        /// The component (`.wasm`, or gzip-compressed `.wasm.gz`).
        file: PathBuf,
    },
    /// Call one hook of a component, as the operator would, and print the answer,
    /// the time and the memory it took as JSON (what the plugin logs goes to stderr).
    Run {
        /// The component (`.wasm`, or gzip-compressed `.wasm.gz`).
        file: PathBuf,
        /// patch-role, scale-role, gate-step or validate.
        #[arg(long)]
        hook: String,
        /// The request as JSON, in the shape of `wit/plugin.wit` (camelCase fields).
        #[arg(long, conflicts_with = "set")]
        request: Option<PathBuf>,
        /// Build the request the operator would send for this set (not for gate-step).
        #[arg(long)]
        set: Option<PathBuf>,
        /// The role a `--set` request is about (default: the first).
        #[arg(long, requires = "set")]
        role: Option<String>,
        /// The binding's config as JSON (default: the set's binding of the plugin, or {}).
        #[arg(long, requires = "set")]
        config: Option<String>,
        /// The call's deadline in ms of its own time, CPU and waits (default: the
        /// operator's, 100). Raise it to see how long a call that times out really takes.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600_000))]
        deadline_ms: Option<u64>,
    },
    /// Write a buildable plugin skeleton with a test: a rollout gate in Rust, C or JavaScript.
    New {
        /// The plugin's name (its ConfigMap's name, which sets bind to).
        name: String,
        #[arg(long, value_enum)]
        lang: disagg::plugin_new::Lang,
        /// Where to write it (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The guest SDK a Rust skeleton depends on (default: this checkout's guest-sdk/).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Check a component, then print it as a plugin ConfigMap (gzip-compressed) for the operator's namespace.
    Configmap {
        /// The plugin's name (the ConfigMap's name, which sets bind to).
        #[arg(long)]
        name: String,
        /// The namespace the operator runs in.
        #[arg(long, default_value = "lws-system")]
        namespace: String,
        /// The component (`.wasm`, or gzip-compressed `.wasm.gz`).
        file: PathBuf,
    },
}

/// `disagg run`: logs to stderr, runs until SIGTERM or Ctrl-C.
fn run(args: RunArgs) -> ExitCode {
    init_logs(args.log_json, "info");
    block_on(async {
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| format!("no cluster configuration found: {e}"))?,
        };
        let default_plugins = bindings::parse_defaults(&args.default_plugins)?;
        let options = disagg::controller::Options {
            namespace: args.namespace,
            plugin_dir: args.plugin_dir,
            probe_addr: args.probe_addr,
            leader_election: (!args.no_leader_election).then(|| {
                let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
                    format!(
                        "disagg-{}-{}",
                        std::process::id(),
                        k8s_openapi::jiff::Timestamp::now().as_millisecond()
                    )
                });
                let duration = std::time::Duration::from_secs(args.lease_duration_seconds.max(1));
                (identity, duration)
            }),
            default_plugins,
            limits: Limits {
                component_bytes: args.max_component_mib.clamp(1, 64) << 20,
                ..Limits::default()
            },
            concurrency: args.concurrency,
            prometheus: args.signals.prometheus(),
            signal_interval: args.signals.interval(),
        };
        disagg::controller::run(config, options, shutdown_signal()).await
    })
}

/// `disagg dev`.
#[cfg(feature = "dev")]
fn dev(args: DevArgs) -> ExitCode {
    init_logs(false, "warn");
    let options = disagg::dev::DevOptions {
        kubeconfig: args.kubeconfig,
        apply: args.apply,
        listen: args.listen,
        plugin_dir: args.plugin_dir,
        lws_crd: args.lws_crd,
        group_delay: std::time::Duration::from_millis(args.group_delay_ms),
        default_plugins: match bindings::parse_defaults(&args.default_plugins) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        prometheus: args.signals.prometheus(),
        signal_interval: args.signals.interval(),
        start_prometheus: args.prometheus,
    };
    block_on(disagg::dev::run(options, shutdown_signal()))
}

/// `disagg dev` in a build without the in-memory cluster (the operator's image).
#[cfg(not(feature = "dev"))]
fn dev(_args: DevArgs) -> ExitCode {
    eprintln!(
        "error: this disagg was built without the dev cluster (the `dev` feature); run `cargo run -p disagg -- dev` from a clone instead"
    );
    ExitCode::from(BAD_INPUT)
}

/// Runs a long-lived command on a multi-threaded runtime; its error is one line and exit code 1.
fn block_on(command: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
        .and_then(|runtime| runtime.block_on(command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logs(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// Completes on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing reconciles in flight");
}

/// `kubectl disagg VERB`: prints what the verb says, or why it failed.
fn kubectl(cli: disagg::kubectl::Cli) -> ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(disagg::kubectl::run(cli)));
    match result {
        Ok(out) => {
            emit(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code for bad input (like clap's usage errors).
const BAD_INPUT: u8 = 2;
/// Exit code when a plugin under failure policy Fail kept some children from rendering.
const PLUGIN_FAILED: u8 = 1;

fn main() -> ExitCode {
    // Installed or symlinked as `kubectl-disagg`, this binary is a kubectl plugin.
    let invoked_as = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()));
    if invoked_as.as_deref() == Some("kubectl-disagg") {
        return kubectl(disagg::kubectl::Cli::parse());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => return run(args),
        Command::Dev(args) => return dev(args),
        Command::Crds => Ok(crds_yaml()),
        Command::Plan { file } => plan(&file),
        Command::Render {
            file,
            revision_from,
            plugins,
            default_plugins,
        } => render(&file, revision_from.as_deref(), &plugins, &default_plugins),
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => plugin_check(&file),
        Command::Plugin {
            command:
                PluginCommand::Run {
                    file,
                    hook,
                    request,
                    set,
                    role,
                    config,
                    deadline_ms,
                },
        } => {
            init_logs(false, "info");
            disagg::plugin_run::run(&disagg::plugin_run::Call {
                file: &file,
                hook: &hook,
                request: request.as_deref(),
                set: set.as_deref(),
                role: role.as_deref(),
                config: config.as_deref(),
                deadline: deadline_ms.map(std::time::Duration::from_millis),
            })
            .map_err(|e| match e {
                disagg::plugin_run::Failed::Input(e) => CliError::Input(input_error(&file, e)),
                disagg::plugin_run::Failed::Plugin(e) => CliError::Failed(e),
            })
        }
        Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    lang,
                    dir,
                    sdk,
                },
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            disagg::plugin_new::create(&name, lang, &dir, sdk.as_deref()).map_err(CliError::Usage)
        }
        Command::Plugin {
            command:
                PluginCommand::Configmap {
                    name,
                    namespace,
                    file,
                },
        } => plugin_configmap(&name, &namespace, &file),
    };
    match result {
        Ok(out) => {
            emit(&out);
            ExitCode::SUCCESS
        }
        Err(CliError::Partial(out)) => {
            emit(&out);
            ExitCode::from(PLUGIN_FAILED)
        }
        Err(CliError::Input(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(BAD_INPUT)
        }
        Err(CliError::Usage(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(BAD_INPUT)
        }
        Err(CliError::Failed(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(PLUGIN_FAILED)
        }
    }
}

/// Writes a command's output; a reader that stopped early (`disagg … | head`)
/// is not an error.
fn emit(out: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the output: {e}");
    }
}

/// Why a command did not fully succeed.
enum CliError {
    /// Bad input: nothing printed but the error.
    Input(InputError),
    /// Bad arguments (the message names which): nothing printed but the error.
    Usage(String),
    /// A plugin under failure policy Fail stopped some roles; the rest is printed.
    Partial(String),
    /// A plugin was called and failed: nothing is printed but the error.
    Failed(String),
}

impl From<InputError> for CliError {
    fn from(e: InputError) -> Self {
        CliError::Input(e)
    }
}

fn plan(file: &Path) -> Result<String, CliError> {
    let mut cases = load_plan_cases(file)?;
    for case in &mut cases {
        case.solve();
    }
    let mut out = serde_json::to_string_pretty(&cases).expect("plan cases serialise");
    out.push('\n');
    Ok(out)
}

fn render(
    file: &Path,
    from: Option<&Path>,
    plugin_args: &[String],
    default_plugins: &str,
) -> Result<String, CliError> {
    let set = load_set(file)?;
    let defaults = bindings::parse_defaults(default_plugins).map_err(|e| input_error(file, e))?;
    let old = from.map(load_set).transpose()?;
    if let (Some(old), Some(from)) = (&old, from)
        && old.metadata.name != set.metadata.name
    {
        return Err(input_error(
            from,
            format!(
                "metadata.name: {:?} differs from {:?} in {}; a rollout is between two versions of one set",
                old.metadata.name.clone().unwrap_or_default(),
                set.metadata.name.clone().unwrap_or_default(),
                file.display()
            ),
        )
        .into());
    }
    let mut given = Vec::new();
    for arg in plugin_args {
        let (name, path) = arg.split_once('=').ok_or_else(|| {
            input_error(file, format!("--plugin {arg:?}: expected NAME=FILE.wasm"))
        })?;
        let bytes = std::fs::read(path)
            .map_err(|e| input_error(Path::new(path), format!("cannot read: {e}")))?;
        given.push((name.to_string(), bytes));
    }
    let sets: Vec<&DisaggregatedSet> = std::iter::once(&set).chain(&old).collect();
    let plugins = render::plugins(&sets, &defaults, given).map_err(|e| input_error(file, e))?;
    let plan = render::offline(&set, &defaults, &plugins);
    if !plan.violations.is_empty() {
        let list: Vec<String> = plan.violations.iter().map(ToString::to_string).collect();
        return Err(input_error(
            file,
            format!("Valid=False (PluginViolation): {}", list.join("; ")),
        )
        .into());
    }
    let mut out = render::children_yaml(&plan);
    eprint!("{}", render::warnings(&plan));
    if let Some(old) = &old {
        let before = render::offline(old, &defaults, &plugins);
        if let (Some(old), Some(new)) = (&before.target, &plan.target) {
            out.push_str(&render::rollout_comment(old, new));
        }
    }
    if plan.failures.iter().any(|f| f.blocks()) {
        return Err(CliError::Partial(out));
    }
    Ok(out)
}

fn input_error(file: &Path, message: impl Into<String>) -> InputError {
    InputError {
        file: file.display().to_string(),
        message: message.into(),
    }
}

/// A plugin ConfigMap: the component gzip-compressed (deterministically: no
/// timestamp in the header), labelled so the operator loads it.
fn plugin_configmap(name: &str, namespace: &str, file: &Path) -> Result<String, CliError> {
    use std::io::Write as _;
    let bytes = std::fs::read(file).map_err(|e| input_error(file, format!("cannot read: {e}")))?;
    let rt = Runtime::new(Limits::for_tools()).map_err(|e| input_error(file, e))?;
    let plugin = rt
        .load(name, &bytes)
        .map_err(|e| input_error(file, e.to_string()))?;
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut out)
            .map_err(|e| input_error(file, format!("invalid gzip: {e}")))?;
        out
    } else {
        bytes
    };
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&raw)
        .and_then(|()| gz.flush())
        .map_err(|e| input_error(file, e.to_string()))?;
    let compressed = gz.finish().map_err(|e| input_error(file, e.to_string()))?;
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {disagg::api::keys::PLUGIN: "true"},
            "annotations": {"disaggregatedset.x-k8s.io/digest": plugin.digest, "disaggregatedset.x-k8s.io/version": plugin.info.version},
        },
        "binaryData": {"plugin.wasm.gz": k8s_openapi::ByteString(compressed)},
    });
    let yaml = serde_yaml_ng::to_string(&cm).map_err(|e| input_error(file, e.to_string()))?;
    Ok(format!(
        "# Generated by `disagg plugin configmap` from {}: do not edit.\n{yaml}",
        plugin.info.name
    ))
}

fn plugin_check(file: &Path) -> Result<String, CliError> {
    let bytes = std::fs::read(file).map_err(|e| input_error(file, format!("cannot read: {e}")))?;
    let rt = Runtime::new(Limits::for_tools()).map_err(|e| input_error(file, e))?;
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.trim_end_matches(".gz").trim_end_matches(".wasm"))
        .unwrap_or("plugin");
    let p = rt
        .load(name, &bytes)
        .map_err(|e| input_error(file, e.to_string()))?;
    let hooks: Vec<&str> = p.info().hooks.iter().map(|h| h.name()).collect();
    let report = serde_json::json!({
        "name": p.info.name,
        "version": p.info.version,
        "world": p.world(),
        "hooks": hooks,
        "digest": p.digest,
        "sizeBytes": bytes.len(),
        "compileMillis": (p.compile_time.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
    });
    Ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&report).expect("JSON")
    ))
}
