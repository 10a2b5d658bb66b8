//! The developer commands of the binary: `demo` and `bench`.

use crate::cli::{BenchArgs, DemoArgs};

/// Where the control-plane harness is built by default: control-plane/ in Cargo's target directory.
fn default_build_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("control-plane")
}

/// `workspace-assist demo`.
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    crate::install_crypto_provider();
    let build_dir = args.build_dir.unwrap_or_else(default_build_dir);
    crate::devenv::demo::run(crate::devenv::demo::DemoOptions { build_dir }).await
}

/// `workspace-assist bench`: the operator under test is this very binary unless `--operator`
/// names another.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    crate::install_crypto_provider();
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this is a debug build; run `cargo run --release -- bench` for figures worth comparing"
        );
    }
    let options = crate::devenv::bench::BenchOptions {
        build_dir: args.build_dir.unwrap_or_else(default_build_dir),
        operator: match args.operator {
            Some(path) => path,
            None => std::env::current_exe()?,
        },
        latency_samples: args.latency_samples,
        resources: args.resources,
        large: args.large,
        latency_scenario_resources: args.latency_scenario_resources,
        idle_window: args.idle_window,
        concurrency: args.concurrency,
        outage: args.outage,
        noisy_resources: args.noisy_resources,
        quiet_resources: args.quiet_resources,
        noisy_annotation_bytes: args.noisy_annotation_bytes,
    };
    crate::devenv::bench::run(options).await.map(|_| ())
}
