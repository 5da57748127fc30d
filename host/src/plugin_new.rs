//! `disagg plugin new`: a buildable plugin skeleton with a test, in Rust, C or
//! JavaScript. Every skeleton is the same rollout gate (hold step k until the
//! set's `example.com/approved-step` annotation is ≥ k) with the same two
//! requests in `test/`, so what differs between them is only the language.
//! The templates live in `host/templates/plugin/`.

use std::path::{Path, PathBuf};

/// The languages a skeleton can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    C,
    Js,
}

/// A file of a skeleton: its path in the plugin's directory and its template.
struct Template {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

macro_rules! template {
    ($path:literal, $file:literal) => {
        template!($path, $file, false)
    };
    ($path:literal, $file:literal, $exec:literal) => {
        Template {
            path: $path,
            text: include_str!(concat!("../templates/plugin/", $file)),
            executable: $exec,
        }
    };
}

const TESTS: &[Template] = &[
    template!("test/held.json", "test/held.json"),
    template!("test/approved.json", "test/approved.json"),
];
/// The contract, copied into C and JavaScript skeletons (Rust gets it from the SDK).
const WIT: Template = Template {
    path: "wit/plugin.wit",
    text: include_str!("../../wit/plugin.wit"),
    executable: false,
};

fn templates(lang: Lang) -> Vec<&'static Template> {
    const RUST: &[Template] = &[
        template!("Cargo.toml", "rust/Cargo.toml"),
        template!(".cargo/config.toml", "rust/.cargo/config.toml"),
        template!("src/lib.rs", "rust/src/lib.rs"),
        template!("README.md", "rust/README.md"),
        template!(".gitignore", "rust/gitignore"),
    ];
    const C: &[Template] = &[
        template!("gate.c", "c/gate.c"),
        template!("build.sh", "c/build.sh", true),
        template!("test.sh", "c/test.sh", true),
        template!("README.md", "c/README.md"),
        template!(".gitignore", "c/gitignore"),
    ];
    const JS: &[Template] = &[
        template!("gate.js", "js/gate.js"),
        template!("gate.test.mjs", "js/gate.test.mjs"),
        template!("build.mjs", "js/build.mjs"),
        template!("package.json", "js/package.json"),
        template!("README.md", "js/README.md"),
        template!(".gitignore", "js/gitignore"),
    ];
    let own = match lang {
        Lang::Rust => RUST,
        Lang::C => C,
        Lang::Js => JS,
    };
    let wit = (lang != Lang::Rust).then_some(&WIT);
    own.iter().chain(TESTS).chain(wit).collect()
}

/// The guest SDK of the checkout this binary was built from; a Rust skeleton
/// depends on it by path (the SDK is not on crates.io).
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk")
}

/// Writes the skeleton of plugin `name` in `lang` into `dir` (which must not
/// exist or be empty) and returns what to do next.
pub fn create(name: &str, lang: Lang, dir: &Path, sdk: Option<&Path>) -> Result<String, String> {
    check_name(name)?;
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(format!(
            "{}: already exists and is not empty; choose another --dir",
            dir.display()
        ));
    }
    let sdk = match lang {
        Lang::Rust => {
            let sdk = sdk.map(Path::to_path_buf).unwrap_or_else(default_sdk);
            let sdk = std::fs::canonicalize(&sdk)
                .ok()
                .filter(|p| p.join("Cargo.toml").is_file())
                .ok_or_else(|| {
                    format!(
                        "{}: not the guest SDK; pass --sdk with the guest-sdk directory of a disagg checkout",
                        sdk.display()
                    )
                })?;
            sdk.display().to_string()
        }
        Lang::C | Lang::Js => String::new(),
    };
    for t in templates(lang) {
        let text = t
            .text
            .replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", &sdk);
        let path = dir.join(t.path);
        let written = std::fs::create_dir_all(path.parent().expect("templates are in a directory"))
            .and_then(|()| std::fs::write(&path, text))
            .and_then(|()| set_executable(&path, t.executable));
        written.map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
    }
    let d = dir.display();
    Ok(match lang {
        Lang::Rust => format!(
            "wrote {d}: a Rust rollout gate\n  cd {d} && cargo test && cargo build --release --target wasm32-wasip2\n"
        ),
        Lang::C => format!("wrote {d}: a C rollout gate\n  cd {d} && ./test.sh\n"),
        Lang::Js => {
            format!("wrote {d}: a JavaScript rollout gate\n  cd {d} && npm install && npm test\n")
        }
    })
}

/// The name becomes the plugin's ConfigMap name (a DNS label) and, for Rust,
/// the crate's name, so it must be both.
fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name {name:?}: use lower-case letters, digits and '-', starting with a letter, at most 63 characters (it names the plugin's ConfigMap)"
        ))
    }
}

#[cfg(unix)]
fn set_executable(path: &Path, executable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if executable {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_executable(_: &Path, _: bool) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_dns_labels_and_crate_names() {
        for good in ["gate", "ticket-gate", "g2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Gate",
            "2gate",
            "gate-",
            "my_gate",
            "a.b",
            &"g".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_template_uses_only_known_placeholders() {
        for lang in [Lang::Rust, Lang::C, Lang::Js] {
            for t in templates(lang) {
                let rest = t
                    .text
                    .replace("{{name}}", "")
                    .replace("{{crate}}", "")
                    .replace("{{sdk}}", "");
                assert!(!rest.contains("{{"), "{lang:?} {}", t.path);
            }
        }
    }
}
