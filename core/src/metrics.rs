//! Prometheus helpers shared by the api, the worker and the operator.

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

/// Every metric of `registry` in Prometheus' text format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    // Encoding into a Vec fails only for malformed metrics, which registration refuses.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buffer);
    String::from_utf8_lossy(&buffer).into_owned()
}

/// Registers what every LogPipeline process exports beside its own metrics:
/// `logpipeline_build_info{version}` (always 1) and the process's CPU time, resident and
/// virtual memory, open and maximum file descriptors, threads and start time
/// (`process_*`, from `/proc`).
pub fn register_process(registry: &Registry, version: &str) -> Result<(), prometheus::Error> {
    let build_info = IntGaugeVec::new(
        Opts::new(
            "logpipeline_build_info",
            "1, labelled with the version of the running build",
        ),
        &["version"],
    )?;
    build_info.with_label_values(&[version]).set(1);
    registry.register(Box::new(build_info))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_exports_its_build_and_its_resources() {
        let registry = Registry::new();
        register_process(&registry, "1.2.3").unwrap();
        let text = render(&registry);
        assert!(
            text.contains("logpipeline_build_info{version=\"1.2.3\"} 1"),
            "{text}"
        );
        for metric in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("\n{metric} ")),
                "{metric} missing:\n{text}"
            );
        }
    }
}
