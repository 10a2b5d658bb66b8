//! A Huawei Cloud Workspace simulator: the three remote-assistance operations of the contract,
//! AK/SK signature and IAM token verification, per-desktop assistance state, the documented
//! bodies and error bodies with `X-Request-Id`, faults injected on demand, and a record of every
//! request for tests to assert on.

pub mod accounts;
pub mod auth;
pub mod faults;
pub mod identity;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use faults::{Fault, FaultRule};

use crate::workspace::Operation;
use auth::AuthFailure;

/// The code the simulator answers "no remote assistance to cancel" with (HTTP 404). Workspace
/// documents no such code, only that a 404 means "resource not found"; this one is the
/// simulator's own, and the client must not depend on its value.
pub const NO_ASSISTANCE_CODE: &str = "WKS.00010404";

/// The code the simulator answers a desktop that does not exist with (HTTP 404); the
/// simulator's own, like [`NO_ASSISTANCE_CODE`].
pub const NO_DESKTOP_CODE: &str = "WKS.00010032";

/// The code the simulator answers a Create with while a session is in progress (HTTP 400);
/// the simulator's own.
pub const ASSISTANCE_IN_PROGRESS_CODE: &str = "WKS.00010100";

/// How far `X-Sdk-Date` may be from the simulator's clock.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// One request the simulator received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The operation, when the path and method named one.
    pub operation: Option<Operation>,
    /// Project ID from the path.
    pub project_id: String,
    /// Desktop ID from the path.
    pub desktop_id: String,
    /// Status answered (0 when the connection was dropped).
    pub status: u16,
    /// Whether the request was authenticated.
    pub authenticated: bool,
    /// Whether an injected fault answered it.
    pub faulted: bool,
    /// When it arrived.
    pub at: Instant,
    /// The User-Agent header it carried.
    pub user_agent: String,
    /// The agency session user (`session_user.name`) of the credentials, when they were issued
    /// through an agency.
    pub session_user: Option<String>,
}

/// An answer to a cancel that confirms it (204) or that there is nothing to cancel (404 with a
/// Workspace error), as the simulator sent it. Faulted answers are not recorded here.
#[derive(Debug, Clone)]
pub struct SentCancel {
    /// Desktop ID.
    pub desktop_id: String,
    /// 204 or 404.
    pub status: u16,
    /// When the request arrived (wall clock).
    pub received_at: std::time::SystemTime,
    /// When the answer was handed to the connection, after any latency (wall clock).
    pub sent_at: std::time::SystemTime,
}

/// A remote-assistance session as the simulated cloud keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Share space ID.
    pub share_space_id: String,
    /// OPEN, CLOSE, WAIT_USER_CONFIRM or WAIT_USER_ACCESS.
    pub status: String,
    /// ADMIN_INITIATE or ENDUSER_INITIATE.
    pub initiator_type: String,
    /// UTC, `yyyy-MM-ddTHH:mm:ssZ`.
    pub create_time: String,
    /// Invitation code (secret).
    pub invitation_code: String,
    /// Share space password (secret).
    pub share_space_passwd: String,
    /// Failure reason, when any.
    pub failed_reason: Option<String>,
}

impl Session {
    fn new(initiator_type: &str) -> Session {
        Session {
            share_space_id: random_hex(16),
            status: "WAIT_USER_CONFIRM".into(),
            initiator_type: initiator_type.into(),
            create_time: jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            invitation_code: random_hex(4).to_uppercase(),
            share_space_passwd: random_hex(8),
            failed_reason: None,
        }
    }

    /// Whether the session is still in progress.
    pub fn in_progress(&self) -> bool {
        self.status != "CLOSE"
    }
}

#[derive(Debug, Clone)]
struct AkSk {
    secret_key: String,
    security_token: Option<String>,
    /// When temporary credentials stop working.
    expires_at: Option<jiff::Timestamp>,
}

#[derive(Debug, Clone)]
struct IamUser {
    domain: String,
    name: String,
    password: String,
}

#[derive(Default)]
struct State {
    aksk: HashMap<String, AkSk>,
    tokens: HashMap<String, bool>,
    iam_users: Vec<IamUser>,
    token_lifetime: Option<Duration>,
    token_requests: usize,
    token_refusals: usize,
    sessions: HashMap<(String, String), Session>,
    missing_desktops: std::collections::HashSet<(String, String)>,
    sent_cancels: Vec<SentCancel>,
    in_flight: HashMap<(Operation, String), usize>,
    rules: Vec<FaultRule>,
    random_faults: Option<(f64, Vec<Fault>)>,
    latency: Duration,
    omitted_fields: Vec<String>,
    /// Every session ever started, also those a later one replaced (their secrets must never
    /// leak either).
    history: Vec<Session>,
    requests: Vec<RecordedRequest>,
    identities: identity::Identities,
    accounts: accounts::Accounts,
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

impl Simulator {
    /// Starts a simulator on a free loopback port.
    pub async fn start() -> std::io::Result<Simulator> {
        Simulator::start_on("127.0.0.1:0".parse().expect("a socket address")).await
    }

    /// Starts a simulator listening on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, mut stopped) = watch::channel(false);
        let served = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let state = served.clone();
                        let mut stop_conn = stopped.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                            tokio::select! {
                                _ = conn => {}
                                _ = stop_conn.changed() => {}
                            }
                        });
                    }
                }
            }
        });
        Ok(Simulator { state, addr, stop })
    }

    /// Base URL of the simulator, for `spec.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("simulator state"))
    }

    /// Accepts a permanent access key.
    pub fn add_access_key(&self, access_key_id: &str, secret_access_key: &str) {
        self.with(|s| {
            s.aksk.insert(
                access_key_id.into(),
                AkSk {
                    secret_key: secret_access_key.into(),
                    security_token: None,
                    expires_at: None,
                },
            )
        });
    }

    /// Accepts a temporary access key, valid only with its security token.
    pub fn add_temporary_access_key(
        &self,
        access_key_id: &str,
        secret_access_key: &str,
        security_token: &str,
    ) {
        self.with(|s| {
            s.aksk.insert(
                access_key_id.into(),
                AkSk {
                    secret_key: secret_access_key.into(),
                    security_token: Some(security_token.into()),
                    expires_at: None,
                },
            )
        });
    }

    /// Stops accepting an access key (it answers 401 APIGW.0301 from now on).
    pub fn remove_access_key(&self, access_key_id: &str) {
        self.with(|s| s.aksk.remove(access_key_id));
    }

    /// Accepts an IAM token.
    pub fn add_token(&self, token: &str) {
        self.with(|s| s.tokens.insert(token.into(), false));
    }

    /// Lets an IAM user log in with a password at `POST /v3/auth/tokens` (the simulator serves
    /// IAM too: use its endpoint as the IAM endpoint).
    pub fn add_iam_user(&self, domain_name: &str, username: &str, password: &str) {
        self.with(|s| {
            s.iam_users.push(IamUser {
                domain: domain_name.into(),
                name: username.into(),
                password: password.into(),
            });
        });
    }

    /// Lifetime of the tokens IAM issues (default 24 hours).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.with(|s| s.token_lifetime = Some(lifetime));
    }

    /// How many token requests IAM answered with a token.
    pub fn tokens_issued(&self) -> usize {
        self.with(|s| s.token_requests)
    }

    /// How many token requests IAM refused (wrong user, password or body).
    pub fn token_refusals(&self) -> usize {
        self.with(|s| s.token_refusals)
    }

    /// Marks every issued token expired (each answers 401 APIGW.0307 from now on).
    pub fn expire_all_tokens(&self) {
        self.with(|s| s.tokens.values_mut().for_each(|expired| *expired = true));
    }

    /// Marks an IAM token expired (it answers 401 APIGW.0307 from now on).
    pub fn expire_token(&self, token: &str) {
        self.with(|s| s.tokens.insert(token.into(), true));
    }

    /// Checks the Kubernetes tokens presented to pod identity (TokenReview) and STS (the JWKS)
    /// against this API server.
    pub fn trust_kubernetes(&self, client: kube::Client) {
        self.with(|s| s.identities.kubernetes = Some(client));
    }

    /// Serves CCE pod identity at [`Simulator::pod_identity_uri`]: tokens for `audience` of
    /// these ServiceAccounts (`NAMESPACE/NAME`) get temporary credentials.
    pub fn enable_pod_identity(&self, audience: &str, service_accounts: &[&str]) {
        let accounts = service_accounts
            .iter()
            .map(|sa| format!("system:serviceaccount:{}", sa.replacen('/', ":", 1)))
            .collect();
        self.with(|s| s.identities.pod_identity = Some((audience.to_string(), accounts)));
    }

    /// The URI for `HC_CONTAINER_CREDENTIALS_FULL_URI`.
    pub fn pod_identity_uri(&self) -> String {
        format!("{}{}", self.endpoint(), identity::POD_IDENTITY_PATH)
    }

    /// Registers an OIDC identity provider for STS `assume-with-oidc` (the simulator's endpoint
    /// is then the STS endpoint).
    pub fn add_oidc_provider(&self, provider_urn: &str, provider: identity::OidcProvider) {
        self.with(|s| {
            s.identities
                .oidc_providers
                .insert(provider_urn.to_string(), provider)
        });
    }

    /// Plays the ECS metadata service (the simulator's endpoint is then its address).
    pub fn serve_metadata(&self, service: identity::MetadataService) {
        self.with(|s| s.identities.metadata = Some(service));
    }

    /// Forgets every metadata session token (each answers 401 from now on).
    pub fn expire_metadata_tokens(&self) {
        self.with(|s| s.identities.metadata_tokens.clear());
    }

    /// Lifetime of the temporary credentials the identity sources issue (default one hour).
    pub fn set_temporary_lifetime(&self, lifetime: Duration) {
        self.with(|s| s.identities.lifetime = Some(lifetime));
    }

    /// How many temporary credentials `source` (`pod-identity`, `oidc`, `ecs-metadata`) issued.
    pub fn temporary_credentials_issued(&self, source: &str) -> usize {
        self.with(|s| s.identities.issued.get(source).copied().unwrap_or(0))
    }

    /// How many requests `source` refused.
    pub fn identity_refusals(&self, source: &str) -> usize {
        self.with(|s| s.identities.refused.get(source).copied().unwrap_or(0))
    }

    /// The secret keys and security tokens of every temporary credential issued (to scan for
    /// leaks).
    pub fn issued_temporary_secrets(&self) -> Vec<String> {
        self.with(|s| s.identities.issued_secrets.clone())
    }

    /// Makes every temporary credential issued so far expired (401 from now on).
    pub fn expire_temporary_credentials(&self) {
        let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
        self.with(|s| {
            s.aksk
                .values_mut()
                .filter(|k| k.expires_at.is_some())
                .for_each(|k| k.expires_at = Some(past));
        });
    }

    /// Adds an account (IAM domain) owning `projects`. Credentials assigned to it
    /// ([`Simulator::assign_to_account`]) reach only these projects (403 for any other).
    pub fn add_account(&self, domain_id: &str, domain_name: &str, projects: &[&str]) {
        self.with(|s| {
            s.accounts.accounts.insert(
                domain_id.into(),
                accounts::Account {
                    domain_name: domain_name.into(),
                    projects: projects.iter().map(ToString::to_string).collect(),
                },
            )
        });
    }

    /// Adds the agency `name` in the account `delegating`, trusting the account `trusted`.
    pub fn add_agency(&self, delegating: &str, name: &str, trusted: &str) {
        self.with(|s| {
            s.accounts.agencies.push(accounts::Agency {
                delegating: delegating.into(),
                name: name.into(),
                trusted: trusted.into(),
            });
        });
    }

    /// Makes a credential (an access key ID or an IAM token) one of `domain_id`'s.
    pub fn assign_to_account(&self, credential: &str, domain_id: &str) {
        self.with(|s| s.accounts.owners.insert(credential.into(), domain_id.into()));
    }

    /// Makes the temporary credentials the ambient identities issue from now on `domain_id`'s.
    pub fn ambient_account(&self, domain_id: &str) {
        self.with(|s| s.accounts.ambient_account = Some(domain_id.into()));
    }

    /// How many temporary credentials IAM issued through agencies, and how many assume_role
    /// requests it refused.
    pub fn agency_credentials(&self) -> (usize, usize) {
        self.with(|s| (s.accounts.assumed, s.accounts.refused))
    }

    /// Starts a session for a desktop as if its user had asked for assistance.
    pub fn open_session(&self, project_id: &str, desktop_id: &str) -> Session {
        let session = Session::new("ENDUSER_INITIATE");
        self.with(|s| {
            s.history.push(session.clone());
            s.sessions
                .insert((project_id.into(), desktop_id.into()), session.clone())
        });
        session
    }

    /// Every session ever started on any desktop, in order (a desktop's later session replaces
    /// its earlier one in [`Simulator::session`], not here).
    pub fn all_sessions(&self) -> Vec<Session> {
        self.with(|s| s.history.clone())
    }

    /// Leaves these fields out of every Create and Show answer from now on (all of them are
    /// optional in the contract); an empty list serves them again.
    pub fn omit_fields(&self, fields: &[&str]) {
        self.with(|s| s.omitted_fields = fields.iter().map(ToString::to_string).collect());
    }

    /// Changes the cloud status of a desktop's session (for example to CLOSE).
    pub fn set_session_status(&self, project_id: &str, desktop_id: &str, status: &str) {
        self.with(|s| {
            if let Some(session) = s
                .sessions
                .get_mut(&(project_id.to_string(), desktop_id.to_string()))
            {
                session.status = status.into();
            }
        });
    }

    /// Makes a desktop unknown to the cloud: every operation on it answers 404 with a
    /// Workspace error ([`NO_DESKTOP_CODE`]).
    pub fn remove_desktop(&self, project_id: &str, desktop_id: &str) {
        self.with(|s| s.missing_desktops.insert((project_id.into(), desktop_id.into())));
    }

    /// Every confirming answer (204, or a Workspace 404) the simulator sent to a cancel.
    pub fn sent_cancels(&self) -> Vec<SentCancel> {
        self.with(|s| s.sent_cancels.clone())
    }

    /// How many requests of `operation` have arrived and not been answered yet.
    pub fn in_flight(&self, operation: Operation) -> usize {
        self.with(|s| {
            s.in_flight
                .iter()
                .filter(|((op, _), _)| *op == operation)
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// How many requests of `operation` for `desktop_id` have arrived and not been answered yet.
    pub fn in_flight_on(&self, operation: Operation, desktop_id: &str) -> usize {
        self.with(|s| {
            s.in_flight
                .get(&(operation, desktop_id.to_string()))
                .copied()
                .unwrap_or(0)
        })
    }

    /// Every IAM token the simulator issued or was given (to scan for leaks).
    pub fn known_tokens(&self) -> Vec<String> {
        self.with(|s| s.tokens.keys().cloned().collect())
    }

    /// The desktop's session, if it ever had one.
    pub fn session(&self, project_id: &str, desktop_id: &str) -> Option<Session> {
        self.with(|s| {
            s.sessions
                .get(&(project_id.to_string(), desktop_id.to_string()))
                .cloned()
        })
    }

    /// Adds a fault rule; rules are consulted in the order added.
    pub fn inject(&self, rule: FaultRule) {
        self.with(|s| s.rules.push(rule));
    }

    /// Answers a share `rate` (0 to 1) of authenticated requests with one of `faults`, picked at
    /// random, instead of normally.
    pub fn set_random_faults(&self, rate: f64, faults: Vec<Fault>) {
        self.with(|s| s.random_faults = (rate > 0.0 && !faults.is_empty()).then_some((rate, faults)));
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.with(|s| s.rules.clear());
    }

    /// Delays every answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.with(|s| s.latency = latency);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.with(|s| s.requests.clone())
    }

    /// How many requests of `operation` for `desktop_id` were received.
    pub fn count(&self, operation: Operation, desktop_id: &str) -> usize {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.operation == Some(operation) && r.desktop_id == desktop_id)
                .count()
        })
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Counts a request as in flight until it is answered (or its connection is gone).
struct InFlight {
    state: Arc<Mutex<State>>,
    key: (Operation, String),
}

impl InFlight {
    fn enter(state: &Arc<Mutex<State>>, operation: Operation, desktop_id: &str) -> InFlight {
        let key = (operation, desktop_id.to_string());
        *state.lock().unwrap().in_flight.entry(key.clone()).or_default() += 1;
        InFlight {
            state: state.clone(),
            key,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock()
            && let Some(n) = s.in_flight.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// What the handler decided, before recording.
struct Outcome {
    response: Option<Response<Full<Bytes>>>,
    /// The credential (access key ID or token) the request was authenticated with.
    caller: Option<String>,
    authenticated: bool,
    faulted: bool,
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let at = Instant::now();
    let received_at = std::time::SystemTime::now();
    let (parts, body) = req.into_parts();
    let user_agent = parts
        .headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    if parts.method == http::Method::POST && parts.uri.path() == "/v3/auth/tokens" {
        return Ok(issue_token(&state, &body));
    }
    if parts.method == http::Method::POST && parts.uri.path() == crate::workspace::SECURITY_TOKENS_PATH {
        return Ok(assume_role(&state, &parts, &body));
    }
    if let Some(response) = serve_identity(&state, &parts, &body).await {
        return Ok(response);
    }
    let route = route(parts.method.as_str(), parts.uri.path());
    let (operation, project_id, desktop_id) = match &route {
        Some((op, p, d)) => (Some(*op), p.clone(), d.clone()),
        None => (None, String::new(), String::new()),
    };

    let latency = state.lock().unwrap().latency;
    let _in_flight = operation.map(|op| InFlight::enter(&state, op, &desktop_id));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let outcome = decide(&state, &parts, &body, route).await;
    let status = outcome.response.as_ref().map_or(0, |r| r.status().as_u16());
    let mut s = state.lock().unwrap();
    if operation == Some(Operation::CancelRemoteAssistance)
        && matches!(status, 204 | 404)
        && !outcome.faulted
        && outcome.authenticated
    {
        let sent_at = std::time::SystemTime::now();
        s.sent_cancels.push(SentCancel {
            desktop_id: desktop_id.clone(),
            status,
            received_at,
            sent_at,
        });
    }
    let session_user = outcome
        .caller
        .as_ref()
        .and_then(|c| s.accounts.session_users.get(c).cloned());
    s.requests.push(RecordedRequest {
        operation,
        project_id,
        desktop_id,
        status,
        authenticated: outcome.authenticated,
        faulted: outcome.faulted,
        at,
        user_agent,
        session_user,
    });
    drop(s); // before the in-flight guard, which takes the lock too
    outcome.response.ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "fault: connection dropped")
    })
}

async fn decide(
    state: &Arc<Mutex<State>>,
    parts: &http::request::Parts,
    body: &[u8],
    route: Option<(Operation, String, String)>,
) -> Outcome {
    let Some((operation, project_id, desktop_id)) = route else {
        let resp = error_response(
            404,
            "APIGW.0101",
            "The API does not exist or has not been published in the environment",
            None,
            None,
        );
        return Outcome {
            response: Some(resp),
            caller: None,
            authenticated: false,
            faulted: false,
        };
    };
    let caller = match authenticate(state, parts, body) {
        Ok(caller) => caller,
        Err(failure) => {
            let resp = error_response(401, failure.code(), &failure.message(), None, None);
            return Outcome {
                response: Some(resp),
                caller: None,
                authenticated: false,
                faulted: false,
            };
        }
    };
    let authorized = state.lock().unwrap().accounts.authorize(&caller, &project_id);
    if let Err((status, code, message)) = authorized {
        let denial = random_hex(32);
        return Outcome {
            response: Some(error_response(status, code, &message, None, Some(&denial))),
            caller: Some(caller),
            authenticated: true,
            faulted: false,
        };
    }
    let caller = Some(caller);

    let fault = {
        let mut s = state.lock().unwrap();
        let ruled = s
            .rules
            .iter_mut()
            .find(|r| !r.faults.is_empty() && r.matches(&desktop_id, operation))
            .map(|r| r.faults.remove(0));
        ruled.or_else(|| {
            let (rate, faults) = s.random_faults.as_ref()?;
            (rand::random::<f64>() < *rate).then(|| faults[rand::random_range(0..faults.len())].clone())
        })
    };
    match fault {
        Some(Fault::Drop) => {
            return Outcome {
                caller: caller.clone(),
                response: None,
                authenticated: true,
                faulted: true,
            };
        }
        Some(Fault::DropAfterApplying) => {
            // The cloud does the work, and the answer is lost on the way back.
            let _ = serve(state, operation, &project_id, &desktop_id);
            return Outcome {
                caller: caller.clone(),
                response: None,
                authenticated: true,
                faulted: true,
            };
        }
        Some(Fault::SessionStartedMeanwhile) => {
            // The desktop's user asks for assistance just before this request lands.
            let session = Session::new("ENDUSER_INITIATE");
            let mut s = state.lock().unwrap();
            s.history.push(session.clone());
            s.sessions
                .insert((project_id.clone(), desktop_id.clone()), session);
            drop(s);
            let response = serve(state, operation, &project_id, &desktop_id);
            return Outcome {
                caller: caller.clone(),
                response: Some(response),
                authenticated: true,
                faulted: true,
            };
        }
        Some(Fault::OmitFields(fields)) => {
            let response = serve_omitting(state, operation, &project_id, &desktop_id, &fields);
            return Outcome {
                caller: caller.clone(),
                response: Some(response),
                authenticated: true,
                faulted: true,
            };
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Error {
            status,
            code,
            message,
            detail,
            encoded_authorization_message,
        }) => {
            let resp = error_response(
                status,
                &code,
                &message,
                detail.as_deref(),
                encoded_authorization_message.as_deref(),
            );
            return Outcome {
                caller: caller.clone(),
                response: Some(resp),
                authenticated: true,
                faulted: true,
            };
        }
        Some(Fault::Raw {
            status,
            content_type,
            body,
            headers,
        }) => {
            let mut builder = Response::builder()
                .status(status)
                .header("Content-Type", content_type)
                .header("X-Request-Id", random_hex(16));
            for (k, v) in headers {
                builder = builder.header(k, v);
            }
            let resp = builder
                .body(Full::new(Bytes::from(body)))
                .expect("a valid response");
            return Outcome {
                caller: caller.clone(),
                response: Some(resp),
                authenticated: true,
                faulted: true,
            };
        }
        None => {}
    }

    let response = serve(state, operation, &project_id, &desktop_id);
    Outcome {
        caller,
        response: Some(response),
        authenticated: true,
        faulted: false,
    }
}

/// The normal, contract-faithful answer (without the fields set by [`Simulator::omit_fields`]).
fn serve(
    state: &Arc<Mutex<State>>,
    operation: Operation,
    project_id: &str,
    desktop_id: &str,
) -> Response<Full<Bytes>> {
    serve_omitting(state, operation, project_id, desktop_id, &[])
}

/// The normal answer, leaving `omit` (and the fields set by [`Simulator::omit_fields`]) out of
/// its JSON body.
fn serve_omitting(
    state: &Arc<Mutex<State>>,
    operation: Operation,
    project_id: &str,
    desktop_id: &str,
    omit: &[String],
) -> Response<Full<Bytes>> {
    let key = (project_id.to_string(), desktop_id.to_string());
    let mut s = state.lock().unwrap();
    let omitted: Vec<String> = omit.iter().chain(s.omitted_fields.iter()).cloned().collect();
    let json_response = |status: u16, body: &serde_json::Value| {
        let mut body = body.clone();
        if let Some(map) = body.as_object_mut() {
            for field in &omitted {
                map.remove(field);
            }
        }
        json_response(status, &body)
    };
    if s.missing_desktops.contains(&key) {
        return error_response(404, NO_DESKTOP_CODE, "The desktop does not exist.", None, None);
    }
    match operation {
        Operation::CancelRemoteAssistance => match s.sessions.get_mut(&key) {
            Some(session) if session.in_progress() => {
                session.status = "CLOSE".into();
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .header("X-Request-Id", random_hex(16))
                    .body(Full::new(Bytes::new()))
                    .expect("a valid response")
            }
            _ => error_response(
                404,
                NO_ASSISTANCE_CODE,
                "The remote assistance does not exist.",
                None,
                None,
            ),
        },
        Operation::CreateRemoteAssistance => {
            if s.sessions.get(&key).is_some_and(Session::in_progress) {
                return error_response(
                    400,
                    ASSISTANCE_IN_PROGRESS_CODE,
                    "A remote assistance is already in progress for this desktop.",
                    None,
                    None,
                );
            }
            let session = Session::new("ADMIN_INITIATE");
            let body = json!({
                "share_space_id": session.share_space_id,
                "status": session.status,
                "desktop_id": desktop_id,
                "initiator_type": session.initiator_type,
            });
            s.history.push(session.clone());
            s.sessions.insert(key, session);
            json_response(200, &body)
        }
        Operation::IamTokenRequest => error_response(404, "APIGW.0101", "The API does not exist", None, None),
        Operation::ShowDesktopRemoteAssistanceInfo => match s.sessions.get(&key) {
            Some(session) => {
                let body = json!({
                    "share_space_id": session.share_space_id,
                    "invitation_code": session.invitation_code,
                    "share_space_name": format!("assist-{desktop_id}"),
                    "share_space_passwd": session.share_space_passwd,
                    "private_share_link": format!("https://share.example.internal/s/{}?code={}", session.share_space_id, session.invitation_code),
                    "internet_share_link": format!("https://share.example.com/s/{}?code={}", session.share_space_id, session.invitation_code),
                    "create_time": session.create_time,
                    "status": session.status,
                    "failed_reason": session.failed_reason,
                });
                json_response(200, &body)
            }
            None => json_response(200, &json!({})),
        },
    }
}

/// IAM's password login: 201 with `X-Subject-Token` and `token.expires_at`.
fn issue_token(state: &Arc<Mutex<State>>, body: &[u8]) -> Response<Full<Bytes>> {
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let user = &request["auth"]["identity"]["password"]["user"];
    let (name, password, domain) = (
        user["name"].as_str(),
        user["password"].as_str(),
        user["domain"]["name"].as_str(),
    );
    let methods_ok = request["auth"]["identity"]["methods"] == json!(["password"]);
    let project = request["auth"]["scope"]["project"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut s = state.lock().unwrap();
    let known = s.iam_users.iter().any(|u| {
        Some(u.name.as_str()) == name
            && Some(u.password.as_str()) == password
            && Some(u.domain.as_str()) == domain
    });
    if !methods_ok || !known || project.is_empty() {
        s.token_refusals += 1;
        return error_response(
            401,
            "IAM.0011",
            "The username or password is incorrect.",
            None,
            None,
        );
    }
    let token = format!("MII{}", random_hex(48));
    let lifetime = s.token_lifetime.unwrap_or(Duration::from_secs(24 * 3600));
    let expires_at = jiff::Timestamp::now()
        + jiff::SignedDuration::try_from(lifetime).unwrap_or(jiff::SignedDuration::from_hours(24));
    s.tokens.insert(token.clone(), false);
    s.token_requests += 1;
    let body = json!({ "token": {
        "expires_at": expires_at.strftime("%Y-%m-%dT%H:%M:%S.000000Z").to_string(),
        "methods": ["password"],
        "project": { "id": project },
        "user": { "name": name, "domain": { "name": domain } },
    }});
    Response::builder()
        .status(201)
        .header("Content-Type", "application/json")
        .header("X-Subject-Token", token)
        .header("X-Request-Id", random_hex(16))
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// Answers the identity sources' requests (None: not one of their paths, or not served).
async fn serve_identity(
    state: &Arc<Mutex<State>>,
    parts: &http::request::Parts,
    body: &[u8],
) -> Option<Response<Full<Bytes>>> {
    use identity::*;
    let (method, path) = (&parts.method, parts.uri.path());
    let source: &'static str = match (method.as_str(), path) {
        ("POST", POD_IDENTITY_PATH) => "pod-identity",
        ("POST", ASSUME_WITH_OIDC_PATH) => "oidc",
        ("PUT", METADATA_TOKEN_PATH) | ("GET", METADATA_SECURITY_KEY_PATH) => "ecs-metadata",
        _ => return None,
    };
    let result = match source {
        "pod-identity" => pod_identity(state, parts).await,
        "oidc" => assume_with_oidc(state, body).await,
        _ => match metadata(state, parts) {
            Ok(Some(session_token)) => return Some(text_response(200, &session_token)),
            Ok(None) => Ok(()),
            Err(refusal) => Err(refusal),
        },
    };
    let mut s = state.lock().unwrap();
    Some(match result {
        Ok(()) => {
            let lifetime = s.identities.lifetime.unwrap_or(Duration::from_secs(3600));
            let owner = s.accounts.ambient_account.clone();
            let (issued, expires_at) = issue_temporary(&mut s, lifetime, owner);
            *s.identities.issued.entry(source).or_default() += 1;
            json_response(200, &identity::credential_body(source, &issued, expires_at))
        }
        Err((status, code, message)) => {
            *s.identities.refused.entry(source).or_default() += 1;
            error_response(status, code, &message, None, None)
        }
    })
}

/// IAM's `POST /v3.0/OS-CREDENTIAL/securitytokens` with `assume_role`: the caller's signature
/// or token is checked, then the agency (it must exist in the delegating account and trust the
/// caller's account); 201 with temporary credentials of the delegating account.
fn assume_role(
    state: &Arc<Mutex<State>>,
    parts: &http::request::Parts,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let caller = match authenticate(state, parts, body) {
        Ok(caller) => caller,
        Err(failure) => {
            state.lock().unwrap().accounts.refused += 1;
            return error_response(401, failure.code(), &failure.message(), None, None);
        }
    };
    let mut s = state.lock().unwrap();
    let (delegating, duration, session_user) = match s.accounts.assume_role(&caller, body) {
        Ok(granted) => granted,
        Err((status, code, message)) => {
            s.accounts.refused += 1;
            return error_response(status, code, &message, None, None);
        }
    };
    let asked = Duration::from_secs(u64::from(duration));
    let lifetime = s.identities.lifetime.unwrap_or(asked).min(asked);
    let (issued, expires_at) = issue_temporary(&mut s, lifetime, Some(delegating));
    if let Some(user) = session_user {
        s.accounts.session_users.insert(issued.0.clone(), user);
    }
    s.accounts.assumed += 1;
    json_response(
        201,
        &identity::credential_body("ecs-metadata", &issued, expires_at),
    )
}

/// New temporary credentials (AK, SK, security token) that live `lifetime`, accepted by the
/// Workspace side from now on, and owned by the account `owner` (if any); recorded to scan for
/// leaks.
fn issue_temporary(
    s: &mut State,
    lifetime: Duration,
    owner: Option<String>,
) -> ((String, String, String), jiff::Timestamp) {
    let issued = identity::new_temporary();
    let expires_at = jiff::Timestamp::now()
        + jiff::SignedDuration::try_from(lifetime).unwrap_or(jiff::SignedDuration::from_hours(1));
    let (ak, sk, token) = issued.clone();
    if let Some(account) = owner {
        s.accounts.owners.insert(ak.clone(), account);
    }
    s.aksk.insert(
        ak,
        AkSk {
            secret_key: sk,
            security_token: Some(token),
            expires_at: Some(expires_at),
        },
    );
    s.identities
        .issued_secrets
        .extend([issued.1.clone(), issued.2.clone()]);
    (issued, expires_at)
}

/// CCE pod identity: the `Authorization` header is a ServiceAccount token, reviewed by the API
/// server; its ServiceAccount must be bound to an agency.
async fn pod_identity(
    state: &Arc<Mutex<State>>,
    parts: &http::request::Parts,
) -> Result<(), identity::Refusal> {
    let (client, config) = {
        let s = state.lock().unwrap();
        (s.identities.kubernetes.clone(), s.identities.pod_identity.clone())
    };
    let (Some(client), Some((audience, accounts))) = (client, config) else {
        return Err((404, "APIGW.0101", "pod identity is not served".into()));
    };
    let token = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if token.is_empty() {
        return Err((401, "SIM.0401", "no token in Authorization".into()));
    }
    let user = identity::review(&client, token, &audience).await?;
    if !accounts.contains(&user) {
        return Err((403, "SIM.0403", format!("{user} is not bound to an agency")));
    }
    Ok(())
}

/// STS `assume-with-oidc`: the ID token is checked against the provider's issuer, audience and
/// the API server's JWKS; the agency and subject must be allowed.
async fn assume_with_oidc(state: &Arc<Mutex<State>>, body: &[u8]) -> Result<(), identity::Refusal> {
    let request: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| (400, "SIM.0400", "the body is not JSON".to_string()))?;
    let field = |k: &str| request[k].as_str().unwrap_or_default().to_string();
    let (provider_urn, agency_urn, id_token) =
        (field("provider_urn"), field("agency_urn"), field("id_token"));
    if field("agency_session_name").is_empty() || !request["duration_seconds"].is_u64() {
        return Err((
            400,
            "SIM.0400",
            "agency_session_name and duration_seconds are required".into(),
        ));
    }
    let (client, provider) = {
        let s = state.lock().unwrap();
        (
            s.identities.kubernetes.clone(),
            s.identities.oidc_providers.get(&provider_urn).cloned(),
        )
    };
    let client = client.ok_or_else(|| (503, "SIM.0503", "no API server to check tokens with".to_string()))?;
    let provider = provider.ok_or_else(|| {
        (
            404,
            "SIM.0404",
            "the identity provider does not exist".to_string(),
        )
    })?;
    let subject = identity::verify_id_token(&client, &id_token, &provider).await?;
    if !provider.agencies.contains(&agency_urn) || !provider.subjects.contains(&subject) {
        return Err((403, "SIM.0403", format!("{subject} may not assume this agency")));
    }
    Ok(())
}

/// The ECS metadata service: Ok(Some(token)) for a session token, Ok(None) for credentials.
fn metadata(
    state: &Arc<Mutex<State>>,
    parts: &http::request::Parts,
) -> Result<Option<String>, identity::Refusal> {
    let mut s = state.lock().unwrap();
    let Some(service) = s.identities.metadata else {
        return Err((404, "APIGW.0101", "no metadata service here".into()));
    };
    if parts.method == http::Method::PUT {
        if !service.session_tokens {
            return Err((404, "SIM.0404", "Not Found".into()));
        }
        let token = random_hex(24);
        s.identities.metadata_tokens.insert(token.clone());
        return Ok(Some(token));
    }
    if service.session_tokens {
        let sent = parts
            .headers
            .get("x-metadata-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !s.identities.metadata_tokens.contains(sent) {
            return Err((401, "SIM.0401", "the metadata token is missing or expired".into()));
        }
    }
    if !service.agency {
        return Err((401, "SIM.0401", identity::NO_AGENCY_MESSAGE.into()));
    }
    Ok(None)
}

fn text_response(status: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "text/plain")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// Maps a method and path to an operation and its IDs.
fn route(method: &str, path: &str) -> Option<(Operation, String, String)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["v2", project, "desktops", desktop, "remote-assistance"] = segments[..] else {
        return None;
    };
    let decode = |s: &str| percent_decode(s);
    let (project, desktop) = (decode(project), decode(desktop));
    if project.is_empty() || desktop.is_empty() || project.len() > 255 || desktop.len() > 255 {
        return None;
    }
    let operation = match method {
        "DELETE" => Operation::CancelRemoteAssistance,
        "POST" => Operation::CreateRemoteAssistance,
        "GET" => Operation::ShowDesktopRemoteAssistanceInfo,
        _ => return None,
    };
    Some((operation, project, desktop))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Checks the request's IAM token or AK/SK signature; Ok: the token or access key ID.
fn authenticate(
    state: &Arc<Mutex<State>>,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<String, AuthFailure> {
    let headers = &parts.headers;
    if let Some(token) = headers.get("x-auth-token") {
        let token = token.to_str().map_err(|_| AuthFailure::UnknownToken)?;
        return match state.lock().unwrap().tokens.get(token) {
            Some(false) => Ok(token.to_string()),
            Some(true) => Err(AuthFailure::ExpiredToken),
            None => Err(AuthFailure::UnknownToken),
        };
    }
    let authorization = headers
        .get("authorization")
        .ok_or(AuthFailure::Missing)?
        .to_str()
        .map_err(|_| AuthFailure::Malformed("Authorization is not text".into()))?;
    let parsed = auth::parse_authorization(authorization)?;
    let mut sorted = parsed.signed_headers.clone();
    sorted.sort();
    if sorted != parsed.signed_headers || parsed.signed_headers.iter().any(|h| h != &h.to_ascii_lowercase()) {
        return Err(AuthFailure::Malformed(
            "SignedHeaders must be lower case and sorted".into(),
        ));
    }
    if !parsed.signed_headers.iter().any(|h| h == "x-sdk-date") {
        return Err(AuthFailure::BadDate("x-sdk-date is not signed".into()));
    }
    let date = headers
        .get("x-sdk-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| AuthFailure::BadDate("X-Sdk-Date is missing".into()))?;
    let when = auth::parse_sdk_date(date)
        .ok_or_else(|| AuthFailure::BadDate("X-Sdk-Date is not YYYYMMDDTHHMMSSZ".into()))?;
    let skew = jiff::Timestamp::now().duration_since(when).unsigned_abs();
    if skew > MAX_CLOCK_SKEW {
        return Err(AuthFailure::BadDate(
            "X-Sdk-Date is too far from the current time".into(),
        ));
    }
    let key = state
        .lock()
        .unwrap()
        .aksk
        .get(&parsed.access)
        .cloned()
        .ok_or(AuthFailure::UnknownAccessKey)?;
    if key.expires_at.is_some_and(|e| jiff::Timestamp::now() >= e) {
        return Err(AuthFailure::ExpiredSecurityToken);
    }
    if let Some(expected) = &key.security_token {
        let sent = headers.get("x-security-token").and_then(|v| v.to_str().ok());
        if sent != Some(expected.as_str()) || !parsed.signed_headers.iter().any(|h| h == "x-security-token") {
            return Err(AuthFailure::BadSecurityToken);
        }
    }
    let canonical = auth::canonical_request_of(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query(),
        headers,
        &parsed.signed_headers,
        body,
    );
    let expected = auth::expected_signature(&key.secret_key, date, &canonical);
    if auth::same_signature(&expected, &parsed.signature) {
        Ok(parsed.access)
    } else {
        Err(AuthFailure::SignatureMismatch)
    }
}

fn error_response(
    status: u16,
    code: &str,
    message: &str,
    detail: Option<&str>,
    encoded_authorization_message: Option<&str>,
) -> Response<Full<Bytes>> {
    let request_id = random_hex(16);
    let mut body = json!({ "error_code": code, "error_msg": message, "request_id": request_id });
    if let Some(d) = detail {
        body["error_detail"] = json!(d);
    }
    if let Some(m) = encoded_authorization_message {
        body["encoded_authorization_message"] = json!(m);
    }
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("X-Request-Id", request_id)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn json_response(status: u16, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("X-Request-Id", random_hex(16))
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

pub(crate) fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
