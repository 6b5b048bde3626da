//! The detect stage alone, on one core, at fleet sizes: events/s and bytes of state per agent.
//! `cargo bench --bench detect` (default 10,000 and 1,000,000 agents) or `cargo bench --bench detect -- 50000`.
//!
//! Events come from the fleet simulator (every role, incidents included), decoded once up front, so the
//! timing is the engine's alone: policies, hard caps, identity, windows, baselines and their closing.
//! Each shape is timed twice: over the events decoded up front (gigabytes of them, so each is a cache
//! miss before the engine reads it), and with each batch of 4,096 decoded just before it is judged, the
//! decoding untimed (the events in cache, as the pipeline hands them over).
//! Budget (DESIGN.md, issue 4): 5,000,000 events/s at 10k agents.

use std::time::Instant;

use vigil::simulate::{self, SimConfig};
use vigil_detect::{DetectConfig, Engine, Output};

/// Simulated events for `agents` agents: about `per_agent` each over `duration_ms` of event time, as
/// NDJSON lines.
fn fleet(agents: usize, per_agent: usize, duration_ms: i64) -> Vec<String> {
    let cfg = SimConfig {
        agents,
        duration_ms,
        start_ms: 1_767_614_400_000, // a Monday, 12:00 UTC: the busy hours
        seed: 9,
        rate: (agents * per_agent) as f64 / (duration_ms as f64 / 1000.0) / 1.5,
        incidents: 16,
        bad_model: false,
    };
    let mut out = Vec::with_capacity(agents * per_agent);
    simulate::simulate(
        &cfg,
        |l| {
            out.push(l.to_owned());
            Ok(())
        },
        |_| {},
    )
    .unwrap();
    out
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_owned()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.replace('_', "").parse().ok()).collect();
    let sizes = if args.is_empty() { vec![10_000, 1_000_000] } else { args };
    let mut cfg = DetectConfig { policies: simulate::policies(), ..Default::default() };
    cfg.sensitive_resources = simulate::SENSITIVE.iter().map(|s| s.to_string()).collect();
    for off in std::env::var("OFF").unwrap_or_default().split(',') {
        match off {
            "scope" => cfg.scope.enabled = false,
            "spikes" => (cfg.volume.enabled, cfg.data.enabled, cfg.denied.enabled) = (false, false, false),
            "identity" => cfg.identity.enabled = false,
            "policy" => cfg.policies.clear(),
            "limits" => (cfg.rate_limit_per_minute, cfg.session_max_bytes) = (0, 0),
            _ => {}
        }
    }
    for agents in sizes {
        // Two shapes: two hours of a quiet fleet (few events per agent-window: the cost of closing windows
        // dominates) and ten minutes of a busy one (many events per agent-window: the per-event cost).
        let shapes: &[(&str, usize, i64)] = if agents <= 100_000 {
            &[("quiet", 200, 2 * 3_600_000), ("busy", 200, 10 * 60_000)]
        } else {
            &[("quiet", 6, 2 * 3_600_000)]
        };
        for &(shape, per_agent, duration_ms) in shapes {
            let t = Instant::now();
            let lines = fleet(agents, per_agent, duration_ms);
            let events: Vec<_> =
                lines.iter().map(|l| vigil_schemas::decode(l.as_bytes(), 1 << 20).unwrap()).collect();
            eprintln!(
                "{agents} agents, {shape}: {} events simulated and decoded in {:.1}s",
                events.len(),
                t.elapsed().as_secs_f64()
            );
            let rounds = if agents > 100_000 { 1 } else { 3 };
            let mut best = f64::INFINITY;
            let mut report = String::new();
            for _ in 0..rounds {
                let mut engine = Engine::new(&cfg).unwrap();
                let mut out = Output::default();
                let started = Instant::now();
                for batch in events.chunks(4096) {
                    engine.process(batch, &mut out);
                    out.clear();
                }
                engine.finish(&mut out);
                let secs = started.elapsed().as_secs_f64();
                if secs < best {
                    best = secs;
                    let s = engine.stats();
                    report = format!(
                        "detect {agents} agents, {shape}: {:.0} events/s ({:.0} ns/event) over {} events, \
                         {:.1} events per agent-window, {} findings; state {:.0} bytes/agent ({:.1} MiB), \
                         process RSS {:.0} MiB",
                        events.len() as f64 / secs,
                        secs * 1e9 / events.len() as f64,
                        s.events,
                        s.events as f64 / s.windows.max(1) as f64,
                        s.findings,
                        engine.state_bytes() as f64 / engine.agents() as f64,
                        engine.state_bytes() as f64 / (1 << 20) as f64,
                        rss_mib()
                    );
                }
            }
            println!("{report}");
            // The same events decoded a batch at a time just before each batch is judged (the decoding
            // untimed), as the pipeline hands them over: the events are in cache, where above each one
            // is a cache miss in gigabytes decoded long before.
            drop(events);
            let mut best = f64::INFINITY;
            for _ in 0..rounds {
                let mut engine = Engine::new(&cfg).unwrap();
                let mut out = Output::default();
                let mut secs = 0.0;
                for chunk in lines.chunks(4096) {
                    let batch: Vec<_> =
                        chunk.iter().map(|l| vigil_schemas::decode(l.as_bytes(), 1 << 20).unwrap()).collect();
                    let started = Instant::now();
                    engine.process(&batch, &mut out);
                    out.clear();
                    secs += started.elapsed().as_secs_f64();
                }
                let started = Instant::now();
                engine.finish(&mut out);
                best = best.min(secs + started.elapsed().as_secs_f64());
            }
            println!(
                "detect {agents} agents, {shape}, each batch decoded just before it is judged: {:.0} events/s \
                 ({:.0} ns/event)",
                lines.len() as f64 / best,
                best * 1e9 / lines.len() as f64
            );
        }
    }
}
