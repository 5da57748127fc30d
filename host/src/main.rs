//! `disagg`: the DisaggregatedSet operator's one binary.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use disagg::api::crd::crds_yaml;
use disagg::api::set::DisaggregatedSet;
use disagg::core::execute::{Target, target_for};
use disagg::core::render::render_child;
use disagg::core::revision::revision;
use disagg::core::simulate;
use disagg::input::{InputError, load_plan_cases, load_set};
use std::fmt::Write as _;
use std::path::PathBuf;
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
    },
}

/// Exit code for bad input (like clap's usage errors).
const BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds => Ok(crds_yaml()),
        Command::Plan { file } => plan(&file),
        Command::Render {
            file,
            revision_from,
        } => render(&file, revision_from.as_deref()),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(BAD_INPUT)
        }
    }
}

fn plan(file: &std::path::Path) -> Result<String, InputError> {
    let mut cases = load_plan_cases(file)?;
    for case in &mut cases {
        case.solve();
    }
    let mut out = serde_json::to_string_pretty(&cases).expect("plan cases serialise");
    out.push('\n');
    Ok(out)
}

fn target_of(set: &DisaggregatedSet) -> Target {
    // Offline there are no scalers: External roles use their spec replicas as the seed.
    target_for(set, &revision(&set.spec, &[]), |r| r.spec.replicas)
}

fn render(file: &std::path::Path, from: Option<&std::path::Path>) -> Result<String, InputError> {
    let set = load_set(file)?;
    let target = target_of(&set);
    let mut out = String::new();
    for slice in 0..set.spec.slices {
        for (role, t) in set.spec.roles.iter().zip(&target.roles) {
            let child = render_child(&set, role, slice, &target.revision, t.replicas);
            out.push_str("---\n");
            out.push_str(&serde_yaml_ng::to_string(&child).expect("an LWS serialises"));
        }
    }
    if let Some(from) = from {
        let old = load_set(from)?;
        let old_target = target_of(&old);
        if old.metadata.name != set.metadata.name {
            return Err(InputError {
                file: from.display().to_string(),
                message: format!(
                    "metadata.name: {:?} differs from {:?} in {}; a rollout is between two versions of one set",
                    old.metadata.name.unwrap_or_default(),
                    set.metadata.name.unwrap_or_default(),
                    file.display()
                ),
            });
        }
        out.push_str(&rollout_comment(&old_target, &target));
    }
    Ok(out)
}

/// The rollout from `old` to `new`, per slice, as YAML comments so the stream stays applyable.
fn rollout_comment(old: &Target, new: &Target) -> String {
    let mut children = simulate::steady_children(old, 0);
    let snapshots = simulate::rollout(new, &mut children, 100_000);
    let mut out = format!(
        "# rollout {} -> {} (per slice; old/new replicas per role)\n",
        old.revision, new.revision
    );
    if old.revision == new.revision {
        out.push_str("# same revision: replicas change directly, no rollout\n");
    }
    for (i, snap) in snapshots.iter().enumerate() {
        let roles: Vec<String> = snap
            .roles
            .iter()
            .map(|r| format!("{} {}/{}", r.name, r.old, r.new))
            .collect();
        let _ = writeln!(out, "# step {i}: {}", roles.join(", "));
    }
    out
}
