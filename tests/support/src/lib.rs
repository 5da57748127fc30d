//! Helpers every test and benchmark of the workspace shares (a dev-dependency
//! only; nothing here ships).
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// A path in this repository.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// A path in the shared reference material: `$DISAGG_SHARED`, or `../shared`
/// beside the repository.
pub fn shared(path: &str) -> PathBuf {
    match std::env::var_os("DISAGG_SHARED") {
        Some(dir) => PathBuf::from(dir).join(path),
        None => repo("../shared").join(path),
    }
}

/// Writes `text` to a scratch file of this test process and returns its path.
pub fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("disagg-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("a scratch file");
    path
}
