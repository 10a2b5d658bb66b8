//! By default the watches start with a streaming list where the API server has one (KEP-3157,
//! on by default from Kubernetes 1.34), and with a plain list where it does not; with
//! `--streaming-lists false` always with a plain list: the probe's answer on real API servers
//! with the feature on and off, and the operator's lifecycle in each case.

mod support;

use std::time::Duration;

use kube::Api;
use support::control_plane::{ControlPlane, harness};
use support::operator::World;
use workspace_assist::controller::{self, streaming_lists_supported};
use workspace_assist::devenv::bench;
use workspace_assist::resource::{Phase, RemoteAssistance};
use workspace_assist::workspace::Operation;

fn phase_is(phase: Phase) -> impl Fn(&RemoteAssistance) -> bool {
    move |ra| ra.status.as_ref().and_then(|s| s.phase) == Some(phase)
}

/// The API server's request counts are shared by the tests of this binary on its control plane:
/// the tests that compare them run one at a time.
static COUNTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn lists(r: &bench::Requests, resource: &str) -> f64 {
    r.get(&format!("LIST {resource}")).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn a_server_with_streaming_lists_is_found_to_have_them_and_the_operator_uses_them() {
    let _counting = COUNTING.lock().await;
    let mut w = World::new("watchlist").await;
    assert!(
        streaming_lists_supported(&w.api()).await,
        "Kubernetes 1.36 streams initial lists by default"
    );
    assert!(
        streaming_lists_supported(&Api::<RemoteAssistance>::all(w.client.clone())).await,
        "also cluster-wide"
    );

    // By default: a resource that exists before the start comes from the streaming list.
    w.create(w.manifest("before", "desktop-streamed")).await;
    assert!(w.config().streaming_lists, "streaming lists are the default");
    let before = bench::apiserver_requests(&w.client).await.unwrap();
    w.start_operator(w.config());
    w.wait_for(
        "before",
        Duration::from_secs(60),
        "Active",
        phase_is(Phase::Active),
    )
    .await;
    // The API server's own counts: the watches started without a plain LIST.
    let after = bench::apiserver_requests(&w.client).await.unwrap();
    for resource in ["remoteassistances", "secrets"] {
        assert_eq!(
            lists(&after, resource),
            lists(&before, resource),
            "a plain LIST of {resource}: {before:?} -> {after:?}"
        );
    }
    w.delete("before").await;
    w.wait_gone("before", Duration::from_secs(60)).await;
    assert_eq!(
        w.sim.count(Operation::CancelRemoteAssistance, "desktop-streamed"),
        1,
        "one cancel"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn opted_out_the_watches_start_with_a_plain_list() {
    let _counting = COUNTING.lock().await;
    let mut w = World::new("no-streaming").await;
    let lists = |r: &bench::Requests| lists(r, "remoteassistances");
    let before = bench::apiserver_requests(&w.client).await.unwrap();
    w.start_operator(controller::Config {
        streaming_lists: false,
        ..w.config()
    });
    w.create(w.manifest("ra", "desktop-ra")).await;
    w.wait_for("ra", Duration::from_secs(60), "Active", phase_is(Phase::Active))
        .await;
    let after = bench::apiserver_requests(&w.client).await.unwrap();
    assert!(
        lists(&after) > lists(&before),
        "the operator listed RemoteAssistances: {before:?} -> {after:?}"
    );
    w.stop_operator().await;
}

#[tokio::test]
async fn without_streaming_lists_the_operator_lists_and_cancels_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let flags = r#"["--feature-gates=WatchList=false"]"#;
    let cp = ControlPlane::start_in(&harness(), dir.path(), &["-apiserver-flags", flags])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut w = World::on(support::client_for(&cp).await, "no-watchlist").await;
    assert!(
        !streaming_lists_supported(&w.api()).await,
        "the server refuses streaming lists with the gate off"
    );

    // By default, on a server without them: resources that exist before the operator starts
    // come from its plain initial list.
    w.create(w.manifest("before", "desktop-before")).await;
    w.start_operator(w.config());
    w.wait_for(
        "before",
        Duration::from_secs(60),
        "Active",
        phase_is(Phase::Active),
    )
    .await;
    w.create(w.manifest("after", "desktop-after")).await;
    w.wait_for(
        "after",
        Duration::from_secs(60),
        "Active",
        phase_is(Phase::Active),
    )
    .await;
    for (name, desktop) in [("before", "desktop-before"), ("after", "desktop-after")] {
        w.delete(name).await;
        w.wait_gone(name, Duration::from_secs(60)).await;
        assert_eq!(
            w.sim.count(Operation::CancelRemoteAssistance, desktop),
            1,
            "{name}: one cancel"
        );
    }
    w.stop_operator().await;
    cp.stop();
}
