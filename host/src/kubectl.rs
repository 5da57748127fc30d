//! `kubectl disagg …`: the same binary, installed (or symlinked) as
//! `kubectl-disagg`, as a kubectl plugin. Each verb is a thin client over
//! what the API already holds — the set's annotations and status — so
//! everything it does can also be done with `kubectl annotate` and `kubectl
//! get`:
//!
//! | verb | what it does |
//! |---|---|
//! | `status SET` | the per-role table `disagg dev` prints, once or with `--watch` |
//! | `approve SET` | sets the rollout-gate's `approve-step` to the held step |
//! | `pause SET` | sets `paused` (who and why): no rollout step is taken |
//! | `resume SET` | removes `paused` and `abort` |
//! | `abort SET` | sets `abort` (who and why) and `abort-revision`: roll back |
//! | `plan -f FILE` | what applying FILE would do, from the cluster's state |

use crate::api::keys;
use crate::api::lws::LeaderWorkerSet;
use crate::api::scaler::DisaggregatedSetRoleScaler;
use crate::api::set::DisaggregatedSet;
use crate::core::bindings::DefaultBinding;
use crate::core::decide::{Observed, Write, decide};
use crate::core::execute::{Child, Target};
use crate::core::simulate;
use clap::{Parser, Subcommand};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The field manager of the verbs' writes (it shows in managedFields).
const FIELD_MANAGER: &str = "kubectl-disagg";

#[derive(Parser)]
#[command(
    name = "kubectl-disagg",
    bin_name = "kubectl disagg",
    version,
    about = "kubectl verbs for DisaggregatedSets: status, approve, pause, resume, abort, plan"
)]
pub struct Cli {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// A kubeconfig to use instead of $KUBECONFIG or ~/.kube/config.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Per role: replicas (ready/desired) per revision, the rollout step, and what holds it.
    Status {
        set: String,
        /// Redraw whenever it changes, until Ctrl-C.
        #[arg(short, long)]
        watch: bool,
    },
    /// Approve the step the rollout-gate holds (its `approve-step` annotation).
    Approve { set: String },
    /// Take no rollout step until resumed (the `paused` annotation).
    Pause {
        set: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove `paused` and `abort`: the rollout goes on (or starts again).
    Resume { set: String },
    /// Roll the set back to its stable revision (the `abort` annotation).
    Abort {
        set: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// What applying FILE would do: its revision, the children it creates and
    /// the rollout's steps, from the cluster's current state.
    Plan {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Plugin bindings every set gets, as the operator's `--default-plugins`.
        #[arg(long, default_value = crate::defaults::DEFAULT_PLUGINS)]
        default_plugins: String,
    },
}

/// Runs one verb; the text to print, or why it failed.
pub async fn run(cli: Cli) -> Result<String, String> {
    let client = client(cli.kubeconfig.as_ref()).await?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let sets: Api<DisaggregatedSet> = Api::namespaced(client.clone(), &namespace);
    let get = |name: String| {
        let sets = sets.clone();
        let namespace = namespace.clone();
        async move {
            sets.get_opt(&name)
                .await
                .map_err(|e| format!("cannot read DisaggregatedSet {namespace}/{name}: {e}"))?
                .ok_or_else(|| format!("DisaggregatedSet {namespace}/{name} not found"))
        }
    };
    match cli.verb {
        Verb::Status { set, watch } => {
            let lws: Api<LeaderWorkerSet> = Api::namespaced(client.clone(), &namespace);
            let mut last = String::new();
            loop {
                let s = get(set.clone()).await?;
                let kids = children(&lws, &set).await?;
                let now = table(std::slice::from_ref(&s), &kids);
                if !watch {
                    return Ok(now);
                }
                if now != last {
                    println!("{now}");
                    last = now;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        Verb::Approve { set } => {
            let s = get(set.clone()).await?;
            let rollout = s
                .status
                .as_ref()
                .and_then(|st| st.rollout.clone())
                .ok_or_else(|| format!("{set} has no rollout in progress: nothing to approve"))?;
            // A gate is asked about step k+1 when k steps are done (status `step`).
            let step = rollout.step + 1;
            annotate(&sets, &set, json!({keys::APPROVE_STEP: step.to_string()})).await?;
            Ok(format!(
                "approved step {step} of {} of {set}'s rollout to {}\n",
                rollout.total_steps,
                update_revision(&s)
            ))
        }
        Verb::Pause { set, reason } => {
            get(set.clone()).await?;
            annotate(&sets, &set, json!({keys::PAUSED: who(&reason)})).await?;
            Ok(format!(
                "paused {set}: no rollout step is taken until `kubectl disagg resume {set}`\n"
            ))
        }
        Verb::Resume { set } => {
            get(set.clone()).await?;
            annotate(
                &sets,
                &set,
                json!({keys::PAUSED: null, keys::ABORT: null, keys::ABORT_REVISION: null}),
            )
            .await?;
            Ok(format!("resumed {set}\n"))
        }
        Verb::Abort { set, reason } => {
            let s = get(set.clone()).await?;
            let revision = update_revision(&s);
            annotate(
                &sets,
                &set,
                json!({keys::ABORT: who(&reason), keys::ABORT_REVISION: revision}),
            )
            .await?;
            Ok(format!(
                "aborted {set}'s rollout to {revision}: it rolls back to its stable revision; `kubectl disagg resume {set}` rolls forward again\n"
            ))
        }
        Verb::Plan {
            file,
            default_plugins,
        } => plan(&client, &namespace, &file, &default_plugins).await,
    }
}

async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| e.to_string())
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(|e| format!("no cluster to talk to: {e}"))?;
    Client::try_from(config).map_err(|e| e.to_string())
}

async fn children(lws: &Api<LeaderWorkerSet>, set: &str) -> Result<Vec<LeaderWorkerSet>, String> {
    lws.list(&ListParams::default().labels(&format!("{}={set}", keys::NAME)))
        .await
        .map(|l| l.items)
        .map_err(|e| format!("cannot list {set}'s LeaderWorkerSets: {e}"))
}

async fn annotate(
    sets: &Api<DisaggregatedSet>,
    set: &str,
    annotations: serde_json::Value,
) -> Result<(), String> {
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    sets.patch(
        set,
        &pp,
        &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("cannot annotate {set}: {e}"))
}

/// "by USER: reason": who asked, for the set's status.
fn who(reason: &str) -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "kubectl-disagg".into());
    if reason.is_empty() {
        format!("by {user}")
    } else {
        format!("by {user}: {reason}")
    }
}

fn update_revision(set: &DisaggregatedSet) -> String {
    set.status
        .as_ref()
        .and_then(|s| s.update_revision.clone())
        .unwrap_or_default()
}

/// `plan -f FILE`: the decide step on FILE's set with the cluster's children
/// and scalers, then the rollout simulated from there with instant readiness.
async fn plan(
    client: &Client,
    namespace: &str,
    file: &std::path::Path,
    default_plugins: &str,
) -> Result<String, String> {
    let mut set = crate::input::load_set(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let name = set.name_any();
    let namespace = set.namespace().unwrap_or_else(|| namespace.to_string());
    set.metadata.namespace = Some(namespace.clone());
    let sets: Api<DisaggregatedSet> = Api::namespaced(client.clone(), &namespace);
    let live = sets
        .get_opt(&name)
        .await
        .map_err(|e| format!("cannot read DisaggregatedSet {namespace}/{name}: {e}"))?;
    let (kids, scalers) = match &live {
        Some(live) => {
            // The file's spec on the live object: its uid owns the children.
            set.metadata.uid = live.metadata.uid.clone();
            set.metadata.annotations = live.metadata.annotations.clone();
            set.status = live.status.clone();
            let lws: Api<LeaderWorkerSet> = Api::namespaced(client.clone(), &namespace);
            let scalers: Api<DisaggregatedSetRoleScaler> =
                Api::namespaced(client.clone(), &namespace);
            let selector = ListParams::default().labels(&format!("{}={name}", keys::NAME));
            let scalers = scalers
                .list(&selector)
                .await
                .map_err(|e| format!("cannot list {name}'s scalers: {e}"))?;
            (children(&lws, &name).await?, scalers.items)
        }
        None => (Vec::new(), Vec::new()),
    };
    let defaults: Vec<DefaultBinding> =
        crate::core::bindings::parse_defaults(default_plugins).map_err(|e| e.to_string())?;
    let plugins = crate::render::plugins(&[&set], &defaults, Vec::new())?;
    let plan = decide(&Observed {
        set: &set,
        children: &kids,
        scalers: &scalers,
        defaults: &defaults,
        plugins: &plugins,
        signals: &crate::core::signals::NoSignals,
        signal_interval: crate::controller::DEFAULT_SIGNAL_INTERVAL,
        now: k8s_openapi::jiff::Timestamp::now(),
    });
    let mut out = String::new();
    let Some(target) = &plan.target else {
        return Err("a bound plugin is still loading".into());
    };
    let _ = writeln!(
        out,
        "{namespace}/{name}: revision {}{}",
        target.revision,
        if live.is_none() { " (a new set)" } else { "" }
    );
    for v in &plan.violations {
        let _ = writeln!(out, "invalid: {v}");
    }
    out.push_str(&crate::render::warnings(&plan));
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let current: Vec<Child> = kids
        .iter()
        .filter_map(|l| Child::from_lws(l, &uid))
        .collect();
    let revisions: std::collections::BTreeSet<&str> =
        current.iter().map(|c| c.revision.as_str()).collect();
    if revisions.iter().all(|r| *r == target.revision) {
        let _ = writeln!(out, "no rollout: the children already run this revision");
    } else {
        let _ = writeln!(
            out,
            "rolls out from {} to {}",
            revisions.into_iter().collect::<Vec<_>>().join(", "),
            target.revision
        );
    }
    for w in &plan.writes {
        let line = match &w.write {
            Write::CreateChild(c) => format!(
                "create LeaderWorkerSet {} at {} replicas",
                c.name_any(),
                c.spec.replicas
            ),
            Write::ScaleChild { name, replicas } => {
                format!("scale LeaderWorkerSet {name} to {replicas}")
            }
            Write::MarkChild { name, .. } => format!("annotate LeaderWorkerSet {name}"),
            Write::DeleteChild { name } => format!("delete LeaderWorkerSet {name}"),
            Write::CreateScaler(s) => format!("create DisaggregatedSetRoleScaler {}", s.name_any()),
            Write::DeleteScaler { name } => format!("delete DisaggregatedSetRoleScaler {name}"),
            Write::AbortSet { reason, .. } => format!("abort the rollout {reason}"),
            Write::ScalerStatus { .. } => continue,
        };
        let _ = writeln!(out, "next write: {line}");
    }
    out.push_str(&steps(target, current));
    Ok(out)
}

/// The states a rollout to `target` passes through from `children`, per slice 0.
fn steps(target: &Target, mut children: Vec<Child>) -> String {
    let snapshots = simulate::rollout(target, &mut children, 100_000);
    let mut out = String::from("steps (slice 0; old/new groups per role):\n");
    for line in crate::render::step_lines(&snapshots) {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// One line per set and role: replicas (ready/desired) per revision, the step
/// and what holds it (a gate, a pause, an abort, or a plugin failure).
pub fn table(sets: &[DisaggregatedSet], children: &[LeaderWorkerSet]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<28} {:<10} {:<9} HELD\n",
        "SET", "ROLE", "REVISIONS (ready/desired)", "STEP", "AVAILABLE"
    );
    for set in sets {
        let name = set.name_any();
        let status = set.status.clone().unwrap_or_default();
        let step = status
            .rollout
            .as_ref()
            .map(|r| format!("{}/{}", r.step, r.total_steps))
            .unwrap_or_else(|| "-".into());
        let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
        let aborted = condition("RolloutAborted")
            .filter(|c| c.status == "True")
            .map(|c| format!("aborted {}", c.message));
        let gate = status.rollout.as_ref().and_then(|r| {
            r.held_by
                .clone()
                .map(|g| format!("{g}: {}", r.hold_reason.clone().unwrap_or_default()))
        });
        let plugin = condition("Progressing")
            .filter(|c| c.reason == "PluginBlocked")
            .map(|c| c.message.clone());
        let held = aborted.or(gate).or(plugin).unwrap_or_default();
        let available = condition("Available")
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "-".into());
        for role in &set.spec.roles {
            let mut per_revision: BTreeMap<String, (i32, i32)> = BTreeMap::new();
            for c in children.iter().filter(|c| {
                c.namespace() == set.namespace()
                    && c.labels().get(keys::NAME) == Some(&name)
                    && c.labels().get(keys::ROLE) == Some(&role.name)
            }) {
                let rev = c.labels().get(keys::REVISION).cloned().unwrap_or_default();
                let e = per_revision.entry(rev).or_default();
                e.0 += c.status.as_ref().map_or(0, |s| s.ready_replicas);
                e.1 += c.spec.replicas;
            }
            let revisions = per_revision
                .iter()
                .map(|(rev, (ready, desired))| format!("{rev}:{ready}/{desired}"))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                out,
                "{:<24} {:<10} {:<28} {:<10} {:<9} {held}",
                name, role.name, revisions, step, available
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with(status: serde_json::Value) -> DisaggregatedSet {
        let mut set: DisaggregatedSet =
            serde_yaml_ng::from_str(include_str!("../../examples/vllm-pd.yaml")).unwrap();
        set.status = Some(serde_json::from_value(status).unwrap());
        set
    }

    #[test]
    fn the_held_column_shows_aborts_gates_and_plugins_that_hold_a_set_back() {
        let gated = set_with(json!({"rollout": {"step": 0, "totalSteps": 4,
            "heldBy": "rollout-gate", "holdReason": "waiting for approval of step 1"}}));
        let blocked = set_with(json!({"conditions": [{"type": "Progressing",
            "status": "True", "reason": "PluginBlocked", "lastTransitionTime": "2026-12-02T00:00:00Z",
            "message": "changes to role prefill wait for plugins: hostile (patch-role, role prefill, Fail): trapped"}]}));
        let aborted = set_with(json!({"rollout": {"step": 1, "totalSteps": 4,
            "heldBy": "rollout-gate", "holdReason": "waiting"},
            "conditions": [{"type": "RolloutAborted", "status": "True", "reason": "AbortRequested",
            "lastTransitionTime": "2026-12-02T00:00:00Z", "message": "by alice; rolling back to revision a"}]}));
        let table = table(&[gated, blocked, aborted], &[]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[1].ends_with("rollout-gate: waiting for approval of step 1"),
            "{table}"
        );
        assert!(lines[3].ends_with("changes to role prefill wait for plugins: hostile (patch-role, role prefill, Fail): trapped"), "{table}");
        assert!(
            lines[5].ends_with("aborted by alice; rolling back to revision a"),
            "{table}"
        );
    }
}
