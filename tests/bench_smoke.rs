//! A small run of the benchmark's deletion scenarios (1 and 2, with the floors and the
//! controller-runtime baseline), so that the benchmark code keeps working. It asserts what must hold at any speed (one DELETE per resource, every resource gone),
//! never a timing.

mod support;

use std::time::Duration;

use workspace_assist::devenv::bench::{BenchOptions, run};

#[tokio::test]
async fn small_latency_and_drain_runs() {
    let options = BenchOptions {
        build_dir: std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("control-plane"),
        operator: env!("CARGO_BIN_EXE_workspace-assist").into(),
        latency_samples: 20,
        resources: 200,
        large: 0,
        latency_scenario_resources: 0,
        idle_window: Duration::ZERO,
        concurrency: 16,
        outage: Duration::ZERO,
        noisy_resources: 0,
        quiet_resources: 0,
        noisy_annotation_bytes: 0,
    };
    let rows = run(options).await.expect("the benchmark runs");
    let drain = rows
        .iter()
        .find(|r| r.what.starts_with("2. drain 200"))
        .expect("a drain row");
    assert!(
        drain.operator.contains("200 DELETEs") && drain.floor.contains("200 DELETEs"),
        "one DELETE per resource: {drain:?}"
    );
    assert!(
        rows.iter().any(|r| r.what.contains("p99")),
        "latency percentiles: {rows:?}"
    );
    // The controller-runtime baseline ran on the same control plane: one DELETE per resource.
    let baseline = rows
        .iter()
        .find(|r| r.what.contains("controller-runtime baseline") && r.what.starts_with("2. drain"))
        .expect("a baseline row");
    assert!(
        baseline.floor.contains("200 DELETEs"),
        "the baseline cancelled each resource once: {baseline:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.what.contains("memory") && r.what.contains("baseline")),
        "the baseline's memory: {rows:?}"
    );
    // Every request accounted for: the breakdown names the bench's own DELETE of each object.
    let breakdown = rows
        .iter()
        .find(|r| {
            r.what
                .starts_with("2. drain, API requests per deletion by verb and resource")
        })
        .expect("a breakdown row");
    assert!(
        breakdown.operator.contains("DELETE remoteassistances 1.00")
            && breakdown.floor.contains("DELETE remoteassistances 1.00"),
        "{breakdown:?}"
    );
    // The floor doing the operator's duties makes the operator's kinds of request: its Events,
    // the invitation Secret's deletion, the finalizer's removal.
    let duties = rows
        .iter()
        .find(|r| {
            r.what.starts_with("2. drain, API requests per deletion") && r.what.contains("operator's duties")
        })
        .expect("a breakdown against the floor doing the operator's duties");
    for kind in ["POST events", "DELETE secrets", "PATCH remoteassistances"] {
        assert!(
            duties.operator.contains(kind) && duties.floor.contains(kind),
            "{kind} on both sides: {duties:?}"
        );
    }
    // Scenario 1 in three rounds, each with its p99.
    assert_eq!(
        rows.iter()
            .filter(|r| r.what.contains("p99") && r.what.contains("), round "))
            .count(),
        3,
        "{rows:?}"
    );
}

#[test]
fn the_deadline_queue_scenario_runs() {
    // (It asserts inside that no deadline fired; the figure is the bench's to print.)
    let row = workspace_assist::devenv::bench::deadline_queue_idle(100_000);
    println!("{} | {}", row.what, row.operator);
    assert!(row.operator.contains("ns per scan"), "{row:?}");
}
