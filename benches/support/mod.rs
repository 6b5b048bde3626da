//! What the Kafka and HTTP benchmarks share: the fleet, and (from the tests' helpers) tansu on a free
//! loopback port.

#[path = "../../tests/common/mod.rs"]
pub mod common;

pub use common::Broker;

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
        bad_model: false,
    }
}
