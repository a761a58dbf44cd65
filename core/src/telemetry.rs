//! The process's own logs, through `tracing`.
//!
//! Lines go to stdout through a bounded buffer that a thread of its own writes out, and
//! that drops lines when it is full: a reader that stops reading (a log collector or
//! sidecar that hangs) or goes away (a closed pipe) costs lines, never a stalled or
//! crashed process. Writing straight to stdout, a full pipe blocked every thread that
//! logged, and a closed one made the subscriber report each failed line on stderr,
//! which panics when stderr is the same closed pipe: a worker then ignored SIGTERM.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines held for the writing thread before new ones are dropped.
const BUFFERED_LINES: usize = 16_384;

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), `format` shapes.
/// Keep the guard until the process ends: dropping it writes out the lines still
/// buffered, waiting at most about a second for a reader that does not read.
#[must_use = "dropping the guard stops the writing of log lines"]
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal());
    // A subscriber already installed (as in tests) is kept.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    guard
}
