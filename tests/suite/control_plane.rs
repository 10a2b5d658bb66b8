//! Smoke tests proving the test control plane is a real kube-apiserver: CRDs with OpenAPI schema
//! validation, finalizers and deletionTimestamp, and RBAC authorization.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.smoke.test.dev" },
        "spec": {
            "group": "smoke.test.dev",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": { "size": { "type": "integer", "minimum": 1, "maximum": 10 } }
                    }}
                }}
            }]
        }
    }))
    .unwrap()
}

fn widget_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("smoke.test.dev", "v1", "Widget");
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    )
}

fn widget(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "smoke.test.dev/v1", "kind": "Widget",
        "metadata": { "name": name, "finalizers": ["smoke.test.dev/hold"] },
        "spec": spec
    }))
    .unwrap()
}

#[tokio::test]
async fn finalizer_holds_a_custom_resource_until_removed() {
    let client = support::admin_client().await;
    support::install_crd(&client, &widget_crd()).await;
    let ns = support::fresh_namespace(&client, "smoke").await;
    let api = widget_api(&client, &ns);

    api.create(&PostParams::default(), &widget("held", json!({ "size": 3 })))
        .await
        .unwrap();
    api.delete("held", &DeleteParams::default()).await.unwrap();

    let still_there = api.get("held").await.expect("a finalizer keeps the object");
    assert!(
        still_there.metadata.deletion_timestamp.is_some(),
        "deletionTimestamp is set"
    );
    assert_eq!(
        still_there.metadata.finalizers.as_deref(),
        Some(&["smoke.test.dev/hold".to_string()][..])
    );

    let remove = json!({ "metadata": { "finalizers": null } });
    api.patch("held", &PatchParams::default(), &Patch::Merge(&remove))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match api.get_opt("held").await.unwrap() {
            None => break,
            Some(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "object still present 10s after its finalizer was removed"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn schema_validation_rejects_invalid_objects() {
    let client = support::admin_client().await;
    support::install_crd(&client, &widget_crd()).await;
    let ns = support::fresh_namespace(&client, "smoke").await;
    let api = widget_api(&client, &ns);

    for (name, spec) in [
        ("too-big", json!({ "size": 11 })),
        ("wrong-type", json!({ "size": "big" })),
        ("missing", json!({})),
    ] {
        let err = api
            .create(&PostParams::default(), &widget(name, spec))
            .await
            .expect_err(name);
        match err {
            kube::Error::Api(status) => assert_eq!(status.code, 422, "{name}: {status:?}"),
            other => panic!("{name}: expected a 422 from the apiserver, got {other:?}"),
        }
    }
    api.create(&PostParams::default(), &widget("valid", json!({ "size": 10 })))
        .await
        .expect("a valid object is accepted");
}

#[tokio::test]
async fn rbac_authorization_is_enforced() {
    let cp = support::control_plane::shared();
    let mut kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    for auth in &mut kubeconfig.auth_infos {
        if let Some(info) = auth.auth_info.as_mut() {
            info.impersonate = Some("someone-without-roles".into());
        }
    }
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let nobody = Client::try_from(config).unwrap();
    let err = Api::<Namespace>::all(nobody)
        .list(&Default::default())
        .await
        .expect_err("RBAC denies an unbound user");
    match err {
        kube::Error::Api(status) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
    let admin = support::admin_client().await;
    Api::<Namespace>::all(admin)
        .list(&Default::default())
        .await
        .expect("the admin identity may list namespaces");
}
