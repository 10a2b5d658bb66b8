//! Metrics (Prometheus text format), health and readiness, served over HTTP.
//!
//! Label values are bounded: operations, results, phases and reasons are fixed sets, HTTP
//! statuses are numbers, and cloud error codes are kept only when they look like codes
//! (`WKS.00010032`, `APIGW.0308`) and only for the first [`MAX_ERROR_CODES`] distinct ones.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::workspace::{CloudError, Operation};

/// Most distinct cloud error codes kept as label values; later ones count as `other`.
pub const MAX_ERROR_CODES: usize = 64;

type Labels = Vec<(&'static str, String)>;

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    reconcile_duration: Family<Labels, Histogram>,
    cloud_requests: Family<Labels, Counter>,
    cloud_duration: Family<Labels, Histogram>,
    retries: Family<Labels, Counter>,
    kubernetes_errors: Family<Labels, Counter>,
    resources: Family<Labels, Gauge>,
    stuck_deleting: Gauge,
    past_deadline: Gauge,
    cancels: Family<Labels, Counter>,
    leader: Gauge,
    waiting: Family<Labels, Gauge>,
    wait_duration: Family<Labels, Histogram>,
    breakers: Family<Labels, Gauge>,
    agency_fetches: Family<Labels, Counter>,
    seen_codes: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("workspace_assist");
        let reconciles = Family::<Labels, Counter>::default();
        let reconcile_duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let cloud_requests = Family::<Labels, Counter>::default();
        let cloud_duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let retries = Family::<Labels, Counter>::default();
        let kubernetes_errors = Family::<Labels, Counter>::default();
        let resources = Family::<Labels, Gauge>::default();
        let stuck_deleting = Gauge::default();
        let past_deadline = Gauge::default();
        let cancels = Family::<Labels, Counter>::default();
        let leader = Gauge::default();
        let waiting = Family::<Labels, Gauge>::default();
        let wait_duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let breakers = Family::<Labels, Gauge>::default();
        registry.register(
            "reconciles",
            "Reconciles by result and reason",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles by result",
            reconcile_duration.clone(),
        );
        registry.register(
            "cloud_requests",
            "Cloud API calls by operation, HTTP status and error code",
            cloud_requests.clone(),
        );
        registry.register(
            "cloud_request_duration_seconds",
            "Duration of cloud API calls by operation",
            cloud_duration.clone(),
        );
        registry.register(
            "cloud_retries",
            "Retries scheduled after failed cloud calls, by reason",
            retries.clone(),
        );
        registry.register(
            "kubernetes_errors",
            "Failed Kubernetes API calls the operator needed, by verb, kind and HTTP status (0: no answer)",
            kubernetes_errors.clone(),
        );
        registry.register("resources", "RemoteAssistances by phase", resources.clone());
        registry.register(
            "resources_stuck_deleting",
            "RemoteAssistances deleting for longer than the stuck threshold",
            stuck_deleting.clone(),
        );
        registry.register(
            "resources_past_deadline",
            "RemoteAssistances holding a session past its maximum duration and not yet cancelled",
            past_deadline.clone(),
        );
        registry.register(
            "cancels",
            "Confirmed cancels (or nothing to cancel) by cause: spec, deletion or deadline",
            cancels.clone(),
        );
        registry.register(
            "leader",
            "1 when this instance holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "waiting",
            "Reconciles waiting for a reconcile slot (queue=\"slots\") and calls waiting for the cloud budget (queue=\"cloud_budget\"), by urgency",
            waiting.clone(),
        );
        registry.register(
            "wait_duration_seconds",
            "How long reconciles waited for a reconcile slot (queue=\"slots\") and calls for their turn in the cloud budget (queue=\"cloud_budget\"), by urgency",
            wait_duration.clone(),
        );
        registry.register(
            "credential_breakers",
            "Credentials the per-credential breakers track, by trust (trusted, untrusted)",
            breakers.clone(),
        );
        let agency_fetches = Family::<Labels, Counter>::default();
        registry.register(
            "agency_fetches",
            "Fetches of an AgencyBinding's temporary credentials from IAM, by binding and result (ok, failed)",
            agency_fetches.clone(),
        );
        Metrics {
            registry,
            agency_fetches,
            waiting,
            wait_duration,
            breakers,
            reconciles,
            reconcile_duration,
            cloud_requests,
            cloud_duration,
            retries,
            kubernetes_errors,
            resources,
            stuck_deleting,
            past_deadline,
            cancels,
            leader,
            seen_codes: Mutex::default(),
        }
    }

    /// Counts a finished reconcile.
    pub fn reconciled(&self, result: &'static str, reason: &'static str, duration: Duration) {
        self.reconciles
            .get_or_create(&vec![("result", result.into()), ("reason", reason.into())])
            .inc();
        self.reconcile_duration
            .get_or_create(&vec![("result", result.into())])
            .observe(duration.as_secs_f64());
    }

    /// Counts a cloud call and its outcome.
    pub fn cloud_call(&self, operation: Operation, outcome: Result<u16, &CloudError>, duration: Duration) {
        let (status, code) = match outcome {
            Ok(status) => (status.to_string(), String::new()),
            Err(e) => (
                e.http_status()
                    .map_or_else(|| "none".to_string(), |s| s.to_string()),
                self.bounded_code(e.code()),
            ),
        };
        let labels = vec![
            ("operation", operation.as_str().to_string()),
            ("http_status", status),
            ("error_code", code),
        ];
        self.cloud_requests.get_or_create(&labels).inc();
        self.cloud_duration
            .get_or_create(&vec![("operation", operation.as_str().to_string())])
            .observe(duration.as_secs_f64());
    }

    /// Counts a retry scheduled with backoff.
    pub fn retry(&self, reason: &'static str) {
        self.retries.get_or_create(&vec![("reason", reason.into())]).inc();
    }

    /// Counts a failed Kubernetes API call.
    pub fn kubernetes_error(&self, verb: &'static str, kind: &'static str, status: u16) {
        self.kubernetes_errors
            .get_or_create(&vec![
                ("verb", verb.into()),
                ("kind", kind.into()),
                ("http_status", status.to_string()),
            ])
            .inc();
    }

    /// Sets the count of resources in each phase, of those stuck deleting and of those past
    /// their deadline.
    pub fn set_resources(
        &self,
        by_phase: &[(crate::resource::Phase, i64)],
        stuck_deleting: i64,
        past_deadline: i64,
    ) {
        for (phase, count) in by_phase {
            self.resources
                .get_or_create(&vec![("phase", phase.as_str().to_string())])
                .set(*count);
        }
        self.stuck_deleting.set(stuck_deleting);
        self.past_deadline.set(past_deadline);
    }

    /// Counts a confirmed cancel by its cause: `spec`, `deletion` or `deadline`.
    pub fn cancelled(&self, cause: &'static str) {
        self.cancels.get_or_create(&vec![("cause", cause.into())]).inc();
    }

    /// Sets how many wait for each queue (`slots`, `cloud_budget`), by urgency
    /// (`ends_access`, `routine`).
    pub fn set_waiting(&self, queue: &'static str, ends_access: usize, routine: usize) {
        for (urgency, count) in [("ends_access", ends_access), ("routine", routine)] {
            self.waiting
                .get_or_create(&vec![("queue", queue.into()), ("urgency", urgency.into())])
                .set(count as i64);
        }
    }

    /// Records how long one reconcile waited for its slot, or one call for its budget turn.
    pub fn waited(&self, queue: &'static str, ends_access: bool, waited: Duration) {
        let urgency = if ends_access { "ends_access" } else { "routine" };
        self.wait_duration
            .get_or_create(&vec![("queue", queue.into()), ("urgency", urgency.into())])
            .observe(waited.as_secs_f64());
    }

    /// Sets how many credentials the breakers track: trusted, and not (yet) trusted.
    pub fn set_breakers(&self, trusted: usize, untrusted: usize) {
        for (trust, count) in [("trusted", trusted), ("untrusted", untrusted)] {
            self.breakers
                .get_or_create(&vec![("trust", trust.into())])
                .set(count as i64);
        }
    }

    /// Counts one fetch of the binding's credentials (bindings are few: the cluster admin
    /// creates them).
    pub fn agency_fetched(&self, binding: &str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.agency_fetches
            .get_or_create(&vec![("binding", binding.to_string()), ("result", result.into())])
            .inc();
    }

    /// Records whether this instance leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    fn bounded_code(&self, code: Option<&str>) -> String {
        let Some(code) = code else { return String::new() };
        let looks_like_a_code = code.len() <= 24
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
            && !code.is_empty();
        if !looks_like_a_code {
            return "other".into();
        }
        let mut seen = self.seen_codes.lock().expect("codes");
        if seen.contains(code) || seen.len() < MAX_ERROR_CODES {
            seen.insert(code.to_string());
            code.to_string()
        } else {
            "other".into()
        }
    }
}

/// What `/readyz` and `/healthz` report.
#[derive(Default)]
pub struct Health {
    /// The controller's caches are synced (or this instance is a standby, which is ready to take
    /// over).
    pub ready: AtomicBool,
    /// The process is shutting down.
    pub stopping: AtomicBool,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let response = route(req.uri().path(), &metrics, &health);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

fn route(path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" | "/livez" => (StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if health.stopping.load(Ordering::Relaxed) {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "stopping\n".into())
            } else if health.ready.load(Ordering::Relaxed) {
                (StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "caches not synced\n".into(),
                )
            }
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::{ApiError, ErrorBody};

    fn api_error(code: &str) -> CloudError {
        CloudError::from(ApiError {
            operation: Operation::CancelRemoteAssistance,
            http_status: 400,
            body: ErrorBody {
                code: Some(code.into()),
                ..ErrorBody::default()
            },
            request_id: Some("REQID0123456789".into()),
        })
    }

    #[test]
    fn renders_prometheus_text_with_bounded_labels() {
        let m = Metrics::new();
        m.cloud_call(
            Operation::CancelRemoteAssistance,
            Ok(204),
            Duration::from_millis(3),
        );
        m.cloud_call(
            Operation::CancelRemoteAssistance,
            Err(&api_error("WKS.0001")),
            Duration::from_millis(3),
        );
        m.cloud_call(
            Operation::CancelRemoteAssistance,
            Err(&api_error("<html> not a code")),
            Duration::from_millis(3),
        );
        for i in 0..(MAX_ERROR_CODES + 5) {
            m.cloud_call(
                Operation::CancelRemoteAssistance,
                Err(&api_error(&format!("X.{i}"))),
                Duration::from_millis(1),
            );
        }
        m.reconciled("success", "Reconciled", Duration::from_millis(10));
        m.set_resources(&[(crate::resource::Phase::Active, 3)], 1, 0);
        m.waited("slots", true, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains(r#"workspace_assist_cloud_requests_total{operation="CancelRemoteAssistance",http_status="204",error_code=""} 1"#), "{text}");
        assert!(text.contains(r#"error_code="WKS.0001""#));
        assert!(text.contains(r#"error_code="other""#));
        assert!(!text.contains("REQID0123456789"), "no request IDs");
        assert!(text.contains(r#"workspace_assist_resources{phase="Active"} 3"#));
        assert!(text.contains("workspace_assist_resources_stuck_deleting 1"));
        assert!(text.contains("workspace_assist_reconcile_duration_seconds_bucket"));
        assert!(
            text.contains(
                r#"workspace_assist_wait_duration_seconds_count{queue="slots",urgency="ends_access"} 1"#
            ),
            "{text}"
        );
        let codes = text
            .lines()
            .filter(|l| l.starts_with("workspace_assist_cloud_requests_total{"))
            .count();
        assert!(codes <= MAX_ERROR_CODES + 3, "label values are bounded: {codes}");
    }
}
