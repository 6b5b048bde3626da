//! Helpers shared by the end-to-end tests: the vigil binary, scratch folders, and the independent
//! Python readers (DuckDB, pyarrow) that `scripts/test.sh` installs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The vigil binary under test.
pub fn vigil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

/// A fresh scratch folder, removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("vigil-test-").tempdir().expect("temp dir")
}

/// The Python with duckdb and pyarrow. A missing one fails the test: it is never a skip.
pub fn python() -> PathBuf {
    let p = std::env::var_os("VIGIL_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/vigil/venv/bin/python")
    });
    assert!(
        p.exists(),
        "no Python with duckdb and pyarrow at {}: run scripts/test.sh, which installs them",
        p.display()
    );
    p
}

/// Runs `tests/py/archive.py CMD ROOT ARGS...` and parses its JSON answer.
pub fn archive_py(cmd: &str, root: &Path, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/archive.py");
    let out = Command::new(python()).arg(script).arg(cmd).arg(root).args(args).output().expect("python runs");
    assert!(out.status.success(), "archive.py {cmd} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("archive.py prints JSON")
}

/// Asserts a command succeeded and returns its output.
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "command failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `vigil run --json` over `input` into `archive`, with an optional config file; returns the summary.
pub fn run_json(input: &Path, archive: &Path, config: Option<&Path>) -> serde_json::Value {
    let mut cmd = vigil();
    cmd.arg("run").arg("--input").arg(input).arg("--archive").arg(archive).arg("--json");
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = ok(cmd.output().expect("vigil runs"));
    serde_json::from_slice(&out.stdout).expect("summary is JSON")
}

/// Writes a simulated fleet to `path`; returns the number of events.
pub fn simulate(path: &Path, agents: usize, duration: &str, rate: f64, incidents: usize, seed: u64) -> u64 {
    let out = ok(vigil()
        .args([
            "simulate",
            "--agents",
            &agents.to_string(),
            "--duration",
            duration,
            "--rate",
            &rate.to_string(),
        ])
        .args(["--incidents", &incidents.to_string(), "--seed", &seed.to_string(), "--out"])
        .arg(path)
        .output()
        .expect("vigil simulate runs"));
    drop(out);
    std::fs::read_to_string(path).expect("simulated file").lines().count() as u64
}
