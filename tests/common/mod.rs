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

/// A tool `scripts/test.sh` installs: `$env` when set, else `rel` under ~/.cache/vigil. A missing one
/// fails the test: it is never a skip.
fn installed(env: &str, rel: &str, what: &str) -> PathBuf {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/vigil").join(rel)
    });
    assert!(p.exists(), "no {what} at {}: run scripts/test.sh, which installs it", p.display());
    p
}

/// The Python with duckdb, pyarrow and confluent-kafka.
pub fn python() -> PathBuf {
    installed("VIGIL_PYTHON", "venv/bin/python", "Python with duckdb, pyarrow and confluent-kafka")
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

/// A real Kafka-protocol broker (tansu, in memory) on a free loopback port, stopped when dropped.
/// `scripts/test.sh` installs tansu into ~/.cache/vigil/tools; a missing broker fails the test.
pub struct Broker {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its log, removed with it unless the test is failing (then it is kept, for the failure's reader).
    log: PathBuf,
}

impl Broker {
    /// Starts a broker on a free port and waits until it listens there. The port is free when picked but
    /// can be taken before tansu binds it (tests start brokers and servers side by side): tansu then fails
    /// to bind while a connect to the port still succeeds (someone else's listener). So readiness is
    /// that this child's own socket listens on the port, and a lost race starts again on another port.
    pub fn start() -> Broker {
        let bin = installed("VIGIL_TANSU", "tools/bin/tansu", "Kafka broker (tansu)");
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let url = format!("tcp://{addr}");
            let log_path = std::env::temp_dir().join(format!("vigil-tansu-{port}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(&bin)
                .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("tansu starts");
            let mut broker = Broker { child, addr, log: log_path.clone() };
            let started = std::time::Instant::now();
            loop {
                if listens(broker.child.id(), port) {
                    return broker;
                }
                let lost = std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("AddrInUse"));
                if lost || broker.child.try_wait().unwrap().is_some() {
                    break; // dropped: killed and waited for; try another port
                }
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(20),
                    "tansu did not listen on {} (log: {})",
                    broker.addr,
                    log_path.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        panic!("tansu lost the race for a free port five times");
    }
}

/// A loopback TCP port that is free now, for a server a test starts next. Taken below the kernel's
/// ephemeral range (`ip_local_port_range`), where the kernel never picks the local port of an outgoing
/// connection: the suite makes thousands, and a port bound to `127.0.0.1:0` and released came from that
/// range, so any of them could take it before the server bound it (a broker once died of `AddrInUse`
/// that way). Picks walk from a point that differs per process and per call, so tests picking side by
/// side do not get the same port either.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u32, ephemeral.clamp(10_100, 65_536));
    let span = high - low;
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let start = std::process::id().wrapping_mul(7_919).wrapping_add(call.wrapping_mul(104_729)) % span;
    (0..span)
        .map(|i| (low + (start + i) % span) as u16)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free loopback port below the ephemeral range")
}

/// Whether process `pid` holds a socket listening on TCP `port` (IPv4 or IPv6), from `/proc`.
pub fn listens(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else { continue };
            let at = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if at == Some(port) && *state == "0A" {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Runs `tests/py/kafka_tool.py CMD ARGS...` (confluent-kafka, an independent client) and parses its JSON.
pub fn kafka_tool(args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/kafka_tool.py");
    let out = Command::new(python()).arg(script).args(args).output().expect("python runs");
    assert!(out.status.success(), "kafka_tool {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("kafka_tool prints JSON")
}

/// The command `vigil run --json --kafka` over `topic` into `archive`, until idle for `idle`.
pub fn kafka_member(
    broker: &Broker,
    topic: &str,
    group: &str,
    archive: &Path,
    config: Option<&Path>,
    idle: &str,
) -> Command {
    let mut cmd = vigil();
    cmd.args([
        "run",
        "--json",
        "--kafka",
        &broker.addr,
        "--topic",
        topic,
        "--group",
        group,
        "--idle-exit",
        idle,
    ])
    .arg("--archive")
    .arg(archive);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd
}

/// Runs a [`kafka_member`] to its end; returns the summary.
pub fn run_kafka(
    broker: &Broker,
    topic: &str,
    group: &str,
    archive: &Path,
    config: Option<&Path>,
    idle: &str,
) -> serde_json::Value {
    let out = ok(kafka_member(broker, topic, group, archive, config, idle).output().expect("vigil runs"));
    serde_json::from_slice(&out.stdout).expect("summary is JSON")
}

/// Spawns `cmd` (output discarded) and SIGKILLs it after `delay` unless it ended first; returns whether
/// it was killed.
pub fn kill_after(mut cmd: Command, delay: std::time::Duration) -> bool {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("vigil starts");
    let started = std::time::Instant::now();
    while started.elapsed() < delay && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let killed = child.try_wait().unwrap().is_none();
    if killed {
        child.kill().unwrap(); // SIGKILL on Unix
    }
    child.wait().unwrap();
    killed
}

/// Parquet files under `dir`, at any depth (0 when it does not exist).
pub fn parquet_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .map(|e| e.unwrap().path())
        .map(|p| {
            if p.is_dir() {
                parquet_files(&p)
            } else {
                usize::from(p.extension() == Some("parquet".as_ref()))
            }
        })
        .sum()
}

/// The `host:port` a spawned vigil serves on, from the first stderr line naming `http://…`; the rest of
/// its stderr is drained on a thread so it never blocks on a full pipe.
pub fn served_address(child: &mut std::process::Child) -> String {
    use std::io::{BufRead, Read};
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr is piped"));
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "vigil stopped before serving");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
    });
    addr
}
