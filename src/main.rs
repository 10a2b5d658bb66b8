use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info, warn};
use workspace_assist::cli::{Cli, Command, LogFormat, RunArgs};
use workspace_assist::controller::{self, BackoffPolicy};
use workspace_assist::workspace::ClientOptions;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", workspace_assist::crds_yaml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            init_logging(&args.log_level, args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
            match runtime.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %e, "the operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|e| {
        eprintln!("invalid --log-level {level:?} ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    workspace_assist::install_crypto_provider();
    if args.insecure_skip_tls_verify {
        warn!("--insecure-skip-tls-verify is set: cloud endpoint certificates are NOT verified; anyone on the path can read the credentials");
    }
    let extra_ca_pem = match &args.ca_bundle {
        Some(path) => Some(std::fs::read(path).map_err(|e| format!("reading --ca-bundle {}: {e}", path.display()))?),
        None => None,
    };
    let config = controller::Config {
        namespace: args.namespace.clone(),
        concurrency: args.concurrency,
        cloud_rate_limit: args.cloud_rate_limit,
        poll_interval: args.poll_interval,
        backoff: BackoffPolicy { base: args.backoff_base, max: args.backoff_max, needs_human_recheck: args.needs_human_recheck },
        default_credentials: args.default_credentials_secret.clone(),
        default_deletion_policy: args.default_deletion_policy,
        not_found_codes: args.not_found_error_codes.clone(),
        iam_endpoint: args.iam_endpoint.clone(),
        client: ClientOptions { timeout: args.cloud_timeout, extra_ca_pem, insecure_skip_tls_verify: args.insecure_skip_tls_verify, ..ClientOptions::default() },
        instance: args.instance_name.clone(),
    };
    let client = kube::Client::try_default().await.map_err(|e| format!("connecting to Kubernetes: {e}"))?;
    info!(namespace = args.namespace.as_deref().unwrap_or("(all)"), concurrency = args.concurrency, "starting the operator");
    controller::run(client, config, shutdown_signal()).await
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: finishing in-flight work"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: finishing in-flight work"),
    }
}
