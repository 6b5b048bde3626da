//! What the Kafka and HTTP benchmarks share: the fleet, and (from the tests' helpers) tansu on a free
//! loopback port, and a keep-alive HTTP client.

#![allow(dead_code)]

#[path = "../../tests/common/mod.rs"]
pub mod common;

#[allow(unused_imports)]
pub use common::Broker;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

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

/// The benchmarks' fleet of about `events` events, as NDJSON lines.
pub fn fleet_lines(events: u64) -> Vec<String> {
    let mut lines = Vec::new();
    vigil::simulate::simulate(
        &fleet(events),
        |l| {
            lines.push(l.to_owned());
            Ok(())
        },
        |_| {},
    )
    .expect("the simulator writes to memory");
    lines
}

/// A keep-alive HTTP/1.1 connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { reader: BufReader::new(s.try_clone().unwrap()), writer: s }
    }

    /// Posts one body; returns the status (the answer's body is read and dropped).
    pub fn post(&mut self, body: &[u8]) -> u16 {
        write!(
            self.writer,
            "POST /v1/events HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        self.writer.write_all(body).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut answer = vec![0; length];
        self.reader.read_exact(&mut answer).unwrap();
        status
    }
}
