use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use workspace_assist::cli::{Cli, Command, LogFormat, RunArgs, SimulateArgs};
use workspace_assist::controller::{self, BackoffPolicy};
use workspace_assist::workspace::{AmbientSource, ClientOptions};
use workspace_assist::{leader, telemetry};

fn main() -> ExitCode {
    workspace_assist::memory::limit_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Crd(args) => match args.dir {
            None => {
                print!("{}", workspace_assist::crds_yaml());
                ExitCode::SUCCESS
            }
            Some(dir) => {
                for (file, yaml) in workspace_assist::crd_files() {
                    let path = dir.join(file);
                    if let Err(e) = std::fs::write(&path, yaml) {
                        error!("writing {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                }
                ExitCode::SUCCESS
            }
        },
        Command::Run(args) => {
            init_logging(&args.log_level, args.log_format);
            finish("the operator stopped", runtime().block_on(run(*args)))
        }
        Command::Simulate(args) => {
            init_logging("info", LogFormat::Text);
            finish("the simulator stopped", runtime().block_on(simulate(args)))
        }
        #[cfg(feature = "dev-tools")]
        Command::Demo(args) => {
            init_logging("warn", LogFormat::Text);
            finish(
                "the demo failed",
                runtime().block_on(workspace_assist::devenv::commands::demo(args)),
            )
        }
        #[cfg(feature = "dev-tools")]
        Command::Bench(args) => {
            init_logging("warn", LogFormat::Text);
            finish(
                "the benchmark failed",
                runtime().block_on(workspace_assist::devenv::commands::bench(args)),
            )
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The binary's edge: the one place errors become text, with their whole chain of causes.
fn finish(what: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "{what}");
            eprintln!("{what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use workspace_assist::simulator::{Simulator, faults::parse_fault_rule};
    let split = |s: &str, sep: char, what: &str| -> anyhow::Result<(String, String)> {
        s.split_once(sep)
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{what} must look like {}",
                    match sep {
                        ':' => "A:B",
                        _ => "A/B",
                    }
                )
            })
    };
    let sim = Simulator::start_on(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    for key in &args.access_keys {
        let (ak, sk) = split(key, ':', "--access-key")?;
        sim.add_access_key(&ak, &sk);
    }
    for token in &args.tokens {
        sim.add_token(token);
    }
    for user in &args.iam_users {
        let (domain, rest) = split(user, '/', "--iam-user")?;
        let (name, password) = split(&rest, ':', "--iam-user")?;
        sim.add_iam_user(&domain, &name, &password);
    }
    sim.set_token_lifetime(args.token_lifetime);
    for session in &args.open_sessions {
        let (project, desktop) = split(session, '/', "--open-session")?;
        sim.open_session(&project, &desktop);
    }
    sim.set_latency(args.latency);
    serve_identities(&sim, &args).await?;
    for fault in &args.faults {
        sim.inject(parse_fault_rule(fault).map_err(anyhow::Error::msg)?);
    }
    println!("SIMULATOR_READY {}", sim.endpoint());
    info!(endpoint = %sim.endpoint(), access_keys = args.access_keys.len(), "Workspace simulator running; IAM tokens at {}/v3/auth/tokens", sim.endpoint());
    shutdown_signal().await;
    Ok(())
}

/// The identity sources the simulator plays, from `simulate`'s flags.
async fn serve_identities(
    sim: &workspace_assist::simulator::Simulator,
    args: &SimulateArgs,
) -> anyhow::Result<()> {
    use workspace_assist::simulator::identity::{MetadataService, OidcProvider};
    sim.set_temporary_lifetime(args.temporary_lifetime);
    if args.metadata_agency {
        sim.serve_metadata(MetadataService {
            agency: true,
            session_tokens: true,
        });
    }
    if args.pod_identity.is_empty() && args.oidc_providers.is_empty() {
        return Ok(());
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes to check tokens")?;
    sim.trust_kubernetes(client);
    if !args.pod_identity.is_empty() {
        let accounts: Vec<&str> = args.pod_identity.iter().map(String::as_str).collect();
        sim.enable_pod_identity(&args.pod_identity_audience, &accounts);
    }
    for spec in &args.oidc_providers {
        let bad =
            || format!("--oidc-provider must look like URN=ISSUER,AUDIENCE,AGENCY_URN,SUBJECT: {spec:?}");
        let (urn, rest) = spec.split_once('=').ok_or_else(bad).map_err(anyhow::Error::msg)?;
        let [issuer, audience, agency, subject] = rest.split(',').collect::<Vec<_>>()[..] else {
            anyhow::bail!(bad());
        };
        let provider = OidcProvider {
            issuer: issuer.into(),
            audience: audience.into(),
            agencies: [agency.to_string()].into(),
            subjects: [subject.to_string()].into(),
        };
        sim.add_oidc_provider(urn, provider);
    }
    Ok(())
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|e| {
        eprintln!("invalid --log-level {level:?} ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    workspace_assist::install_crypto_provider();
    if args.insecure_skip_tls_verify {
        warn!(
            "--insecure-skip-tls-verify is set: cloud endpoint certificates are NOT verified; anyone on the path can read the credentials"
        );
    }
    let config = controller_config(&args)?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let telemetry = controller::Telemetry::default();
    let address = telemetry::serve(
        args.metrics_address,
        telemetry.metrics.clone(),
        telemetry.health.clone(),
    )
    .await
    .with_context(|| format!("serving metrics on {}", args.metrics_address))?;
    info!(namespace = args.namespace.as_deref().unwrap_or("(all)"), concurrency = args.concurrency, metrics = %address, instance = %args.instance_name, "starting the operator");

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let (health, grace) = (telemetry.health.clone(), args.shutdown_timeout);
    tokio::spawn(async move {
        shutdown_signal().await;
        health.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        on_signal.cancel();
        tokio::time::sleep(grace).await;
        error!(timeout = ?grace, "in-flight work did not finish within the shutdown timeout: exiting anyway");
        std::process::exit(1);
    });

    if !args.leader_elect {
        // The only instance reconciles: it leads.
        telemetry.metrics.set_leader(true);
        let stop = shutdown.clone();
        return Ok(controller::run(client, config, telemetry, async move { stop.cancelled().await }).await?);
    }
    lead_then_run(client, config, telemetry, &args, shutdown).await
}

/// The controller's settings from the command line (and its env vars).
fn controller_config(args: &RunArgs) -> anyhow::Result<controller::Config> {
    let extra_ca_pem = match &args.ca_bundle {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading --ca-bundle {}", path.display()))?)
        }
        None => None,
    };
    Ok(controller::Config {
        namespace: args.namespace.clone(),
        label_selector: args.watch_label_selector.clone(),
        streaming_lists: args.streaming_lists,
        concurrency: args.concurrency,
        cloud_rate_limit: args.cloud_rate_limit,
        poll_interval: args.poll_interval,
        backoff: BackoffPolicy {
            base: args.backoff_base,
            max: args.backoff_max,
            needs_human_recheck: args.needs_human_recheck,
        },
        default_credentials: args.default_credentials_secret.clone(),
        default_credentials_namespaces: args.default_credentials_namespaces.clone(),
        default_deletion_policy: args.default_deletion_policy,
        not_found_codes: args.not_found_error_codes.clone(),
        iam_endpoint: args.iam_endpoint.clone(),
        client: ClientOptions {
            timeout: args.cloud_timeout,
            extra_ca_pem,
            insecure_skip_tls_verify: args.insecure_skip_tls_verify,
            instance: Some(args.instance_name.clone()),
            proxy: args.proxy.clone(),
            ..ClientOptions::default()
        },
        instance: args.instance_name.clone(),
        stuck_deleting_after: args.stuck_deleting_after,
        unauthenticated_pause: args.unauthenticated_pause,
        fence: leader::Fence::always_open(),
        endpoints: controller::EndpointPolicy {
            extra: args.allowed_endpoints.clone(),
        },
        limits: controller::Limits {
            default_max_duration: args.default_max_duration,
            max_duration: args.max_duration,
            default_ttl_after_finished: args.default_ttl_after_finished,
        },
        refuse_orphan_time_boxed: args.refuse_orphan_time_boxed,
        agency_bindings: args.agency_bindings,
        agency_binding_selector: args.agency_binding_selector.clone(),
        ambient: match args.ambient_credentials {
            Some(kind) => Some(
                AmbientSource::from_env(
                    kind,
                    &|name| std::env::var(name).ok(),
                    Some(args.ecs_metadata_endpoint.clone()),
                )
                .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        },
    })
}

/// Waits for the leader Lease, reconciles while holding it, and releases it on shutdown. A
/// leader that cannot prove its leadership stops its cloud calls at the renew deadline (the
/// fence) and exits, abandoning in-flight work, so that it restarts as a standby.
async fn lead_then_run(
    client: kube::Client,
    mut config: controller::Config,
    telemetry: controller::Telemetry,
    args: &RunArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let lease_name = &args.leader_election_lease_name;
    let timing = leader::Timing::new(args.lease_duration, args.lease_renew_before);
    let fence = leader::Fence::elected();
    config.fence = fence.clone();
    let mut elector = leader::Elector::new(
        kube::Api::namespaced(client.clone(), &namespace),
        lease_name,
        &args.instance_name,
        timing,
        fence,
    );
    // A standby is ready: it can take over at once.
    telemetry
        .health
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    info!(lease = %format!("{namespace}/{lease_name}"), "waiting to become the leader");
    tokio::select! {
        _ = elector.acquire() => {}
        _ = shutdown.cancelled() => return Ok(()),
    }
    info!("became the leader: reconciling");
    telemetry.metrics.set_leader(true);
    let stop = shutdown.clone();
    let mut controller = std::pin::pin!(controller::run(client, config, telemetry.clone(), async move {
        stop.cancelled().await;
    }));
    // The elector keeps renewing while the controller runs, through a graceful shutdown too.
    let result = tokio::select! {
        lost = elector.renew_until_lost() => {
            telemetry.metrics.set_leader(false);
            anyhow::bail!(format!("lost the leader Lease ({lost:?}): its cloud calls stopped at the renew deadline; exiting so that this instance restarts as a standby"));
        }
        result = &mut controller => result,
    };
    telemetry.metrics.set_leader(false);
    if let Err(e) = elector.release().await {
        warn!(error = %e, "could not release the leader Lease");
    }
    Ok(result?)
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: finishing in-flight work"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: finishing in-flight work"),
    }
}
