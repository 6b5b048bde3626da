//! vigil's own logs: structured events through `tracing`, human-readable on stderr by default (colour
//! only on a terminal), one JSON object per line with `--log-format json` (or `VIGIL_LOG_FORMAT=json`)
//! for a log shipper. `VIGIL_LOG` filters, in `tracing`'s directive syntax (default `info`).
//!
//! What a command was asked for (a summary, a table, a report) is its output and is printed as such;
//! what vigil does while it works (listening, recovering, retrying, a status line, a fault it rides
//! out) is a log event here, with its numbers as fields.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event (`timestamp`, `level`, `message`, and the event's fields).
    Json,
}

/// Installs the process's log subscriber (once; later calls do nothing).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // A write to a stderr that is gone (a closed pipe, a full disk) is dropped: there is nowhere to say
    // so, and tracing-subscriber's own report of it is an `eprintln!`, which panics. Inside a Kafka
    // rebalance callback that panic left the consumer's close waiting forever: a member whose stderr
    // reader had died could not be stopped.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}
