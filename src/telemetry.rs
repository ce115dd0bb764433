//! Logging. Every line written during a call carries the call's span (`rpc` with `request_id` and
//! `method`), in the human format as a prefix and in JSON as fields.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Installs the global subscriber. Returns an error if the filter does not parse; a second call in
/// one process (tests) is ignored.
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init(),
    };
    // Already installed (a second server in one test process): keep the first.
    drop(installed);
    Ok(())
}
