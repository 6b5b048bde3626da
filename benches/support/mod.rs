//! What the Kafka and HTTP benchmarks share: the fleet, and tansu on a free loopback port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vigil::simulate::SimConfig;

/// The benchmarks' fleet: 1,000 agents at 60 events/s of simulated time, sized to about `events`.
pub fn fleet(events: u64) -> SimConfig {
    SimConfig {
        agents: 1000,
        duration_ms: (events as f64 / 60.0 * 1000.0) as i64,
        start_ms: 1_767_614_400_000,
        seed: 3,
        rate: 60.0,
        incidents: 8,
    }
}

/// A tansu broker (in memory), killed when dropped.
pub struct Broker {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Broker {
    /// Starts tansu (from VIGIL_TANSU, else ~/.cache/vigil/tools/bin/tansu, where scripts/test.sh
    /// installs it) and waits until it accepts connections.
    pub fn start() -> Broker {
        let tansu = std::env::var_os("VIGIL_TANSU").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/vigil/tools/bin/tansu")
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let child = Command::new(&tansu)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {}: {e} (run scripts/test.sh to install tansu)", tansu.display())
            });
        while std::net::TcpStream::connect(&addr).is_err() {
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, addr }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
