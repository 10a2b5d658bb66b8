//! Command-line interface: every setting is a flag and an environment variable.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::resource::DeletionPolicy;

/// Kubernetes operator for Huawei Cloud Workspace remote assistance.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator against the cluster of the current kubeconfig or service account.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (or, with --dir, write one file each).
    Crd(CrdArgs),
    /// Run the Workspace simulator (and IAM token endpoint): try the operator or a GitOps setup
    /// without a Huawei Cloud account.
    Simulate(SimulateArgs),
    /// Run the whole lifecycle locally: a real control plane, the simulator and the operator.
    #[cfg(feature = "dev-tools")]
    Demo(DemoArgs),
    /// Measure deletion latency, drain and create throughput, memory and idle cost against a
    /// floor measured in the same run (build with --release).
    #[cfg(feature = "dev-tools")]
    Bench(BenchArgs),
}

/// Settings of `bench`.
#[cfg(feature = "dev-tools")]
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Sequential deletions in the latency scenario.
    #[arg(long, default_value_t = 200)]
    pub latency_samples: usize,
    /// Resources in the create, drain, memory and idle scenarios.
    #[arg(long, default_value_t = 10_000)]
    pub resources: usize,
    /// Resources in the large memory and start-up scenario (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    pub large: usize,
    /// Resources in the cloud-latency scenario (0 skips it).
    #[arg(long, default_value_t = 2_000)]
    pub latency_scenario_resources: usize,
    /// Measuring window of the idle scenario: at least the poll interval (5m) to see every poll (0s skips it).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub idle_window: Duration,
    /// Reconciles at once (the operator's --concurrency, and the floor's).
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// How long the API server is away in the outage scenario (0s skips it).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub outage: Duration,
    /// Churning resources of the noisy namespace in the noisy-neighbour scenario (0 skips it).
    #[arg(long, default_value_t = 2_000)]
    pub noisy_resources: usize,
    /// Deletions, and as many deadlines, of the quiet namespace in the noisy-neighbour scenario.
    #[arg(long, default_value_t = 200)]
    pub quiet_resources: usize,
    /// Bytes of foreign annotations on each noisy resource (the API server allows 256 KiB in all).
    #[arg(long, default_value_t = 64 * 1024)]
    pub noisy_annotation_bytes: usize,
    /// Where to build the control-plane harness (default: control-plane/ in Cargo's target
    /// directory).
    #[arg(long)]
    pub build_dir: Option<PathBuf>,
    /// The operator binary to measure (default: this one), e.g. the shipped build without the
    /// developer tools, or a wrapper that runs it under a profiler.
    #[arg(long)]
    pub operator: Option<PathBuf>,
}

/// Settings of `simulate`.
#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Address to listen on (plain HTTP; put `endpoint: http://ADDRESS` in a RemoteAssistance).
    #[arg(long, env = "SIMULATOR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,

    /// An accepted access key, as ACCESS_KEY_ID:SECRET_ACCESS_KEY (repeatable).
    #[arg(long = "access-key", env = "SIMULATOR_ACCESS_KEYS", value_delimiter = ' ')]
    pub access_keys: Vec<String>,

    /// An accepted IAM token (repeatable).
    #[arg(long = "token", env = "SIMULATOR_TOKENS", value_delimiter = ' ')]
    pub tokens: Vec<String>,

    /// An IAM user that may log in with a password, as DOMAIN/USER:PASSWORD (repeatable).
    #[arg(long = "iam-user", env = "SIMULATOR_IAM_USERS", value_delimiter = ' ')]
    pub iam_users: Vec<String>,

    /// Lifetime of the tokens the IAM endpoint issues.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub token_lifetime: Duration,

    /// A session already in progress, as PROJECT_ID/DESKTOP_ID (repeatable), as if the desktop's
    /// user had asked for help.
    #[arg(long = "open-session")]
    pub open_sessions: Vec<String>,

    /// Delay added to every answer.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub latency: Duration,

    /// Serve CCE pod identity (at /v1/pod-identity/credentials) for this ServiceAccount,
    /// NAMESPACE/NAME (repeatable); its tokens are checked with a TokenReview on the cluster of
    /// the current kubeconfig.
    #[arg(long = "pod-identity")]
    pub pod_identity: Vec<String>,

    /// The audience pod identity tokens must carry.
    #[arg(long, default_value = "pod-identity.workspace.sim")]
    pub pod_identity_audience: String,

    /// Serve STS assume-with-oidc for an identity provider: URN=ISSUER,AUDIENCE,AGENCY_URN,SUBJECT
    /// (repeatable); tokens are checked against the JWKS of the current kubeconfig's cluster.
    #[arg(long = "oidc-provider")]
    pub oidc_providers: Vec<String>,

    /// Play the ECS metadata service of a node with an agency (session tokens supported).
    #[arg(long, default_value_t = false)]
    pub metadata_agency: bool,

    /// Lifetime of the temporary credentials the identity sources issue.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub temporary_lifetime: Duration,

    /// A fault rule, e.g. `operation=cancel,status=503,code=APIGW.0308,times=3` (repeatable;
    /// keys: operation, desktop, kind=error|html|drop|delay|redirect, times, status, code,
    /// message, delay, location).
    #[arg(long = "fault")]
    pub faults: Vec<String>,
}

/// Settings of `demo`.
#[cfg(feature = "dev-tools")]
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Where to build the control-plane harness (default: control-plane/ in Cargo's target
    /// directory).
    #[arg(long)]
    pub build_dir: Option<PathBuf>,
}

/// Log line format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of `crd`.
#[derive(Args, Debug, Clone)]
pub struct CrdArgs {
    /// Write each CRD into this directory as `<name>.yaml` (as `crds/` holds them) instead of
    /// printing them.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// Settings of `run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Reconcile only the RemoteAssistances whose labels match this selector (Kubernetes
    /// syntax, e.g. `shard=a` or `tier in (gold,silver)`): to split the work between several
    /// operator Deployments, each with its own selector and its own Lease
    /// (--leader-election-lease-name).
    #[arg(long, env = "WATCH_LABEL_SELECTOR")]
    pub watch_label_selector: Option<String>,

    /// Start the watches with a streaming list when the API server has one (asked once at
    /// start; Kubernetes 1.34 and later by default): objects are decoded as they arrive, which
    /// halves the start-up with 100,000 resources. `false`: always a plain list.
    #[arg(long, env = "STREAMING_LISTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub streaming_lists: bool,

    /// Most reconciles running at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Most cloud API calls per second over all resources (the gateway allows about 200/s per API).
    #[arg(long, env = "CLOUD_RATE_LIMIT", default_value = "50")]
    pub cloud_rate_limit: NonZeroU32,

    /// How often an open session is observed (e.g. 60s, 5m).
    #[arg(long, env = "POLL_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// First retry after a passing cloud failure; doubles up to --backoff-max, with jitter.
    #[arg(long, env = "BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,

    /// Longest wait between retries of passing cloud failures.
    #[arg(long, env = "BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// Recheck interval after a failure that needs a person (401, 403, bad Secret); a change of
    /// the Secret, the spec or the retry annotation rechecks at once.
    #[arg(long, env = "NEEDS_HUMAN_RECHECK", default_value = "5m", value_parser = parse_duration)]
    pub needs_human_recheck: Duration,

    /// Timeout of one cloud call.
    #[arg(long, env = "CLOUD_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub cloud_timeout: Duration,

    /// Credentials Secret (NAMESPACE/NAME) for resources without spec.credentialsSecretRef.
    #[arg(long, env = "DEFAULT_CREDENTIALS_SECRET", value_parser = parse_namespaced_name)]
    pub default_credentials_secret: Option<(String, String)>,

    /// The operator's own identity, for resources without spec.credentialsSecretRef, instead of
    /// --default-credentials-secret: pod-identity (CCE pod identity), oidc (STS with a
    /// projected ServiceAccount token) or ecs-metadata (the node's agency). Each reads the
    /// official SDKs' environment variables (see Credentials in docs/spec/v1/remoteassistance.md).
    #[arg(
        long,
        env = "AMBIENT_CREDENTIALS",
        value_enum,
        conflicts_with = "default_credentials_secret"
    )]
    pub ambient_credentials: Option<crate::workspace::AmbientKind>,

    /// Address of the ECS metadata service, for --ambient-credentials=ecs-metadata.
    #[arg(long, env = "ECS_METADATA_ENDPOINT", default_value = crate::workspace::DEFAULT_METADATA_ENDPOINT)]
    pub ecs_metadata_endpoint: url::Url,

    /// Label selector of the namespaces whose resources may use --default-credentials-secret
    /// or --ambient-credentials
    /// (`key=value`, `key!=value`, `key`, `!key`, comma-separated). Without it no namespace may:
    /// those credentials are the operator's, not the namespace's.
    #[arg(long, env = "DEFAULT_CREDENTIALS_NAMESPACES", value_parser = crate::controller::LabelSelector::parse)]
    pub default_credentials_namespaces: Option<crate::controller::LabelSelector>,

    /// Maximum duration of the sessions of resources that set no spec.maxDuration (e.g. 2h; none
    /// by default: sessions stay open until cancelled).
    #[arg(long, env = "DEFAULT_MAX_DURATION", value_parser = parse_duration)]
    pub default_max_duration: Option<Duration>,

    /// The longest session any resource may have: a longer spec.maxDuration is capped (and
    /// status says so), and resources without one get this one if there is no default.
    #[arg(long, env = "MAX_DURATION", value_parser = parse_duration)]
    pub max_duration: Option<Duration>,

    /// Refuse deletionPolicy Orphan for a resource that holds a session with a deadline:
    /// deleting it cancels the session all the same (an Event says so), so that no session
    /// outlives the time box by deleting its resource.
    #[arg(long, env = "REFUSE_ORPHAN_TIME_BOXED", default_value_t = false, action = clap::ArgAction::Set)]
    pub refuse_orphan_time_boxed: bool,

    /// Watch AgencyBindings (cluster-scoped; the operator's ClusterRole must let it read them
    /// and write their status and finalizer) and let RemoteAssistances in the namespaces they
    /// select reach other accounts through those agencies, with the operator's own identity.
    #[arg(long, env = "AGENCY_BINDINGS", default_value_t = false, action = clap::ArgAction::Set)]
    pub agency_bindings: bool,

    /// Use only the AgencyBindings whose labels match this selector (several operators in one
    /// cluster, each with bindings of its own). Default: all.
    #[arg(long, env = "AGENCY_BINDING_SELECTOR")]
    pub agency_binding_selector: Option<String>,

    /// How long after finishing (Cancelled or Closed) resources that set no
    /// spec.ttlAfterFinished are deleted (none by default: they stay).
    #[arg(long, env = "DEFAULT_TTL_AFTER_FINISHED", value_parser = parse_duration)]
    pub default_ttl_after_finished: Option<Duration>,

    /// Deletion policy of resources that set none: Cancel or Orphan.
    #[arg(long, env = "DEFAULT_DELETION_POLICY", default_value = "Cancel", value_parser = parse_policy)]
    pub default_deletion_policy: DeletionPolicy,

    /// An extra cloud error code that means "not found" (repeatable).
    #[arg(
        long = "not-found-error-code",
        env = "NOT_FOUND_ERROR_CODES",
        value_delimiter = ','
    )]
    pub not_found_error_codes: Vec<String>,

    /// IAM endpoint for password logins whose Secret has no iamEndpoint (default: the region's,
    /// https://iam.{region}.myhuaweicloud.com).
    #[arg(long, env = "IAM_ENDPOINT")]
    pub iam_endpoint: Option<url::Url>,

    /// PEM bundle of extra CA certificates to trust for the cloud endpoint.
    #[arg(long, env = "CLOUD_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,

    /// Accept any TLS certificate from the cloud endpoint. Dangerous; logged at every start.
    #[arg(long, env = "INSECURE_SKIP_TLS_VERIFY", default_value_t = false)]
    pub insecure_skip_tls_verify: bool,

    /// Proxy URL for every outgoing call (Workspace, IAM, STS, metadata). The environment's
    /// HTTP_PROXY/HTTPS_PROXY are never used: a proxy sees the tokens sent to http:// endpoints,
    /// so only a cluster admin's flag chooses one.
    #[arg(long = "proxy", env = "WORKSPACE_ASSIST_PROXY")]
    pub proxy: Option<url::Url>,

    /// Name of this instance in Events (set it to the pod name).
    #[arg(long, env = "POD_NAME", default_value = "workspace-assist")]
    pub instance_name: String,

    /// Address of the metrics (/metrics) and health (/healthz, /readyz) server.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: std::net::SocketAddr,

    /// Elect a leader on a coordination.k8s.io Lease; only the leader reconciles.
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, else "default").
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader-election Lease.
    #[arg(long, env = "LEADER_ELECTION_LEASE_NAME", default_value = "workspace-assist")]
    pub leader_election_lease_name: String,

    /// How long a leader's lease is valid after its last renewal; a standby takes over after it.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long before its expiry the leader renews the lease.
    #[arg(long, env = "LEASE_RENEW_BEFORE", default_value = "5s", value_parser = parse_duration)]
    pub lease_renew_before: Duration,

    /// On SIGTERM, how long in-flight work may take before the process exits anyway (keep it
    /// below the pod's terminationGracePeriodSeconds).
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// An endpoint credentials may be sent to, besides Huawei Cloud's official Workspace and IAM
    /// endpoints (repeatable): `scheme://host[:port][/path]`, `*` standing for one label of the
    /// host (https://workspace.*.example.internal). A private endpoint, a proxy or the simulator
    /// must be allowed here; plain http:// only when written so. A resource naming another
    /// endpoint is Stalled (EndpointNotAllowed) and nothing is sent.
    #[arg(long = "allowed-endpoint", env = "ALLOWED_ENDPOINTS", value_delimiter = ',', value_parser = parse_endpoint_rule)]
    pub allowed_endpoints: Vec<crate::controller::EndpointRule>,

    /// After credentials fail to authenticate (401), how long every call with them is held back,
    /// across all resources, before one probe (the gateway locks an AK/SK for 5 minutes after 5
    /// failures). A changed Secret is tried at once.
    #[arg(long, env = "UNAUTHENTICATED_PAUSE", alias = "unauthenticated-hold", default_value = "5m", value_parser = parse_duration)]
    pub unauthenticated_pause: Duration,

    /// A resource deleting for longer than this counts in workspace_assist_resources_stuck_deleting.
    #[arg(long, env = "STUCK_DELETING_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub stuck_deleting_after: Duration,

    /// Log level filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Parses `90s`, `5m`, `1h 30m`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 30s or 5m: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} must not be negative"))
}

fn parse_namespaced_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.into(), name.into()))
        }
        _ => Err(format!("{s:?} must be NAMESPACE/NAME")),
    }
}

fn parse_policy(s: &str) -> Result<DeletionPolicy, String> {
    s.parse()
}

fn parse_endpoint_rule(s: &str) -> Result<crate::controller::EndpointRule, String> {
    crate::controller::EndpointRule::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn names_and_policies() {
        assert_eq!(
            parse_namespaced_name("ops/cloud").unwrap(),
            ("ops".into(), "cloud".into())
        );
        assert!(parse_namespaced_name("cloud").is_err());
        assert_eq!(parse_policy("Orphan").unwrap(), DeletionPolicy::Orphan);
        assert!(parse_policy("orphan").is_err());
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
