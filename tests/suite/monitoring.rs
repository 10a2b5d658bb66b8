//! What a Prometheus and Grafana user loads: the alert rules (checked and unit-tested with
//! promtool), the dashboard (every query names only metrics and labels a live `/metrics`
//! exports), and `/metrics` itself (parsed as OpenMetrics 1.0).

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use openmetrics_parser::OpenMetricsType;
use openmetrics_parser::openmetrics::parse_openmetrics;
use serde_json::json;
use support::operator::{PROJECT, World, condition_reason};
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::simulator::{Fault, FaultRule};
use workspace_assist::workspace::Operation;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const T: Duration = Duration::from_secs(30);

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn promtool() -> PathBuf {
    // Built from Prometheus's Go module (tests/promtool pins the version), like the control plane.
    let harness = workspace_assist::devenv::control_plane::Harness::promtool(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("promtool"),
    );
    workspace_assist::devenv::control_plane::build_tool(
        &harness,
        "github.com/prometheus/prometheus/cmd/promtool",
        "promtool",
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn rule_groups() -> serde_yaml::Value {
    let rule: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/components/prometheusrule/prometheusrule.yaml")).unwrap();
    assert_eq!(rule["kind"], "PrometheusRule");
    rule["spec"]["groups"].clone()
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_step_in_the_docs() {
    let readme = read("docs/runbooks.md");
    let groups = rule_groups();
    let alerts: Vec<&serde_yaml::Value> = groups
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .collect();
    assert!(alerts.len() >= 7, "the alerts the operator needs");
    for alert in alerts {
        let name = alert["alert"].as_str().expect("alerting rules only");
        assert!(
            ["critical", "warning"].contains(&alert["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: a severity"
        );
        assert!(
            alert["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{name}: a summary"
        );
        let description = alert["annotations"]["description"].as_str().unwrap_or("");
        assert!(
            description.contains(&format!("runbook \"{name}\"")),
            "{name}: the description names its runbook step: {description}"
        );
        assert!(
            readme.contains(&format!("\n## {name}\n")),
            "{name}: docs/runbooks.md has its runbook step"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool_check_and_unit_tests() {
    let promtool = promtool();
    let dir = tempfile::tempdir().unwrap();
    // As Prometheus loads them (the PrometheusRule's spec is a rule file).
    let full = dir.path().join("full.yaml");
    std::fs::write(
        &full,
        serde_yaml::to_string(&serde_yaml::Mapping::from_iter([(
            "groups".into(),
            rule_groups(),
        )]))
        .unwrap(),
    )
    .unwrap();
    let check = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&full)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // The unit tests compare labels; the annotations' text is checked above.
    let mut groups = rule_groups();
    for group in groups.as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            rule.as_mapping_mut().unwrap().remove("annotations");
        }
    }
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(&serde_yaml::Mapping::from_iter([("groups".into(), groups)])).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        Path::new(ROOT).join("tests/prometheus/alerts-test.yaml"),
        dir.path().join("alerts-test.yaml"),
    )
    .unwrap();
    let test = Command::new(&promtool)
        .arg("test")
        .arg("rules")
        .arg("alerts-test.yaml")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

/// The series a query may name, with the labels each carries, from a parsed exposition.
fn queryable(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let exposition = parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("/metrics is not valid OpenMetrics: {e:?}\n{text}"));
    let mut series = BTreeMap::new();
    for (name, family) in &exposition.families {
        let labels: BTreeSet<String> = family.get_label_names().iter().cloned().collect();
        let with = |extra: &str| {
            labels
                .iter()
                .cloned()
                .chain(std::iter::once(extra.to_string()))
                .collect::<BTreeSet<_>>()
        };
        match family.family_type {
            OpenMetricsType::Counter => {
                series.insert(format!("{name}_total"), labels.clone());
            }
            OpenMetricsType::Histogram => {
                series.insert(format!("{name}_bucket"), with("le"));
                series.insert(format!("{name}_sum"), labels.clone());
                series.insert(format!("{name}_count"), labels.clone());
            }
            _ => {
                series.insert(name.clone(), labels.clone());
            }
        }
    }
    series
}

/// What a PromQL expression names: each metric with the labels of its own matchers
/// (`metric{label=...}`), and the labels of its `by (…)`/`on (…)` clauses.
struct Names {
    selectors: Vec<(String, BTreeSet<String>)>,
    grouping: BTreeSet<String>,
}

impl Names {
    fn metrics(&self) -> BTreeSet<String> {
        self.selectors.iter().map(|(m, _)| m.clone()).collect()
    }
}

fn names_in(expr: &str) -> Names {
    let ident = |s: &str| {
        s.trim()
            .trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .to_string()
    };
    let mut names = Names {
        selectors: Vec::new(),
        grouping: BTreeSet::new(),
    };
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().collect();
        if rest.starts_with("workspace_assist_") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            i += name.len();
            let mut labels = BTreeSet::new();
            if chars.get(i) == Some(&'{') {
                let inner: String = chars[i + 1..].iter().take_while(|c| **c != '}').collect();
                for matcher in inner.split(',') {
                    let label: String = matcher
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !label.is_empty() {
                        labels.insert(label);
                    }
                }
                i += inner.len() + 2;
            }
            names.selectors.push((name, labels));
            continue;
        }
        for keyword in ["by (", "on (", "by(", "on("] {
            if let Some(after) = rest.strip_prefix(keyword) {
                let inner: String = after.chars().take_while(|c| *c != ')').collect();
                names
                    .grouping
                    .extend(inner.split(',').map(ident).filter(|l| !l.is_empty()));
            }
        }
        i += 1;
    }
    names
}

#[test]
fn the_query_reader_finds_metrics_and_labels() {
    let n = names_in(
        r#"sum by (le, operation) (rate(workspace_assist_cloud_request_duration_seconds_bucket{job=~"$job",http_status!~"2.."}[5m])) / on (operation) workspace_assist_leader"#,
    );
    assert_eq!(
        n.metrics(),
        BTreeSet::from([
            "workspace_assist_cloud_request_duration_seconds_bucket".to_string(),
            "workspace_assist_leader".to_string()
        ])
    );
    assert_eq!(
        n.selectors[0].1,
        BTreeSet::from(["job".to_string(), "http_status".to_string()]),
        "matchers belong to their own metric"
    );
    assert!(n.selectors[1].1.is_empty());
    assert_eq!(
        n.grouping,
        BTreeSet::from(["le".to_string(), "operation".to_string()])
    );
}

#[tokio::test]
async fn live_metrics_parse_as_openmetrics_and_the_dashboard_names_only_what_they_export() {
    // An operator that has done a bit of everything: a session held, one cancelled, a transient
    // cloud failure retried, and a stalled resource.
    let mut w = World::new("monitor").await;
    let telemetry = workspace_assist::controller::Telemetry::default();
    let address = workspace_assist::telemetry::serve(
        "127.0.0.1:0".parse().unwrap(),
        telemetry.metrics.clone(),
        telemetry.health.clone(),
    )
    .await
    .unwrap();
    w.start_operator_with(w.config(), telemetry.clone());
    w.sim.inject(FaultRule::new(
        "flaky",
        Operation::ShowDesktopRemoteAssistanceInfo,
        vec![Fault::error(503, "APIGW.0308", "throttled")],
    ));
    w.create(w.manifest("flaky", "flaky")).await;
    w.create(w.manifest("done", "done")).await;
    let mut wrong = w.manifest("wrong", "wrong");
    wrong["spec"]["credentialsSecretRef"]["name"] = json!("missing-secret");
    w.create(wrong).await;
    let active = |ra: &RemoteAssistance| ra.status.as_ref().and_then(|s| s.phase) == Some(Phase::Active);
    w.wait_for("flaky", T, "Active", active).await;
    w.wait_for("done", T, "Active", active).await;
    w.wait_for("wrong", T, "Stalled", |ra| {
        condition_reason(ra, "Stalled").is_some()
    })
    .await;
    w.delete("done").await;
    w.wait_gone("done", T).await;
    assert!(w.sim.session(PROJECT, "done").is_some_and(|s| !s.in_progress()));
    // A failed Kubernetes call is hard to cause here: one is recorded through the call the
    // operator makes, so that the family has its labels.
    telemetry
        .metrics
        .kubernetes_error("patch", "RemoteAssistance", 409);
    // Agency fetches need an AgencyBinding (tests/suite/agencies.rs): recorded the same way.
    telemetry.metrics.agency_fetched("example-binding", true);
    telemetry.metrics.agency_fetched("example-binding", false);
    let http = reqwest::Client::new();
    let url = format!("http://{address}/metrics");
    support::operator::eventually(T, "the per-phase gauges", || async {
        http.get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains(r#"workspace_assist_resources{phase="Active"}"#)
    })
    .await;
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    let series = queryable(&text);
    for expected in [
        "workspace_assist_reconciles_total",
        "workspace_assist_cloud_request_duration_seconds_bucket",
        "workspace_assist_resources",
        "workspace_assist_leader",
    ] {
        assert!(series.contains_key(expected), "{expected} in {series:?}");
    }

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/workspace-assist.json")).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("{title}: no query"));
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a query without expr"));
            let names = names_in(expr);
            assert!(
                !names.selectors.is_empty(),
                "{title}: {expr} names no metric of the operator"
            );
            // job and instance come from Prometheus's scrape, not the exposition.
            let scraped = |label: &str| ["job", "instance"].contains(&label);
            for (metric, matchers) in &names.selectors {
                let exported = series.get(metric).unwrap_or_else(|| {
                    panic!(
                        "{title}: {metric} is not exported; /metrics has {:?}",
                        series.keys()
                    )
                });
                // A matcher's label is on the metric it selects; a grouping label on every
                // metric the expression aggregates.
                for label in matchers.iter().chain(&names.grouping) {
                    assert!(
                        exported.contains(label) || scraped(label),
                        "{title}: label {label} is not on {metric} ({exported:?}) in {expr}"
                    );
                }
                used.insert(metric.clone());
            }
        }
    }
    // The dashboard covers what the issue of monitoring asks for.
    for needed in [
        "workspace_assist_resources",
        "workspace_assist_resources_stuck_deleting",
        "workspace_assist_cloud_requests_total",
        "workspace_assist_cloud_request_duration_seconds_bucket",
        "workspace_assist_reconciles_total",
        "workspace_assist_leader",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
    // And the alert rules name only exported metrics and their labels too.
    for group in rule_groups().as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let (alert, expr) = (
                rule["alert"].as_str().unwrap_or("?"),
                rule["expr"].as_str().unwrap(),
            );
            let names = names_in(expr);
            for (metric, matchers) in &names.selectors {
                let exported = series
                    .get(metric)
                    .unwrap_or_else(|| panic!("{alert} uses {metric}, which is not exported"));
                for label in matchers.iter().chain(&names.grouping) {
                    assert!(
                        exported.contains(label)
                            || ["job", "instance", "namespace", "pod"].contains(&label.as_str()),
                        "{alert}: label {label} is not on {metric} in {expr}"
                    );
                }
            }
        }
    }
    w.stop_operator().await;
}
