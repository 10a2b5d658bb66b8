//! Which objects to reconcile from the reflected watch of RemoteAssistances.
//!
//! kube-runtime's reflector keeps a (re)list's objects aside until the list ends (`InitDone`)
//! and only then replaces the store with them, while `applied_objects()` passes each listed
//! object on as it arrives. A reconcile started in between reads the object from the store as
//! it was before the list. After an API server restart, a spec change made during the outage
//! was read in its older version, found nothing to do, and was never acted on (a streaming list
//! makes the gap long: its end is a bookmark sent after the objects). So the objects of a list
//! are passed on when it ends, from the store it filled.

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

/// The objects to reconcile: each object the watch applies, and every object in the store when
/// a list ends. Deletions trigger nothing (the finalizer keeps a resource until its cleanup).
pub fn applied_after_lists<K>(
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    store: Store<K>,
) -> impl Stream<Item = watcher::Result<K>> + Send + 'static
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    events.flat_map(move |event| {
        let objects: Box<dyn Iterator<Item = watcher::Result<K>> + Send> = match event {
            Ok(watcher::Event::Apply(object)) => Box::new(std::iter::once(Ok(object))),
            // Cloned one at a time as the controller takes them, not all at once.
            Ok(watcher::Event::InitDone) => {
                Box::new(store.state().into_iter().map(|object| Ok(K::clone(&object))))
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_) | watcher::Event::Delete(_)) => {
                Box::new(std::iter::empty())
            }
            Err(e) => Box::new(std::iter::once(Err(e))),
        };
        futures::stream::iter(objects)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::reflector;
    use watcher::Event;

    fn object(name: &str, version: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("ns".into());
        c.metadata.resource_version = Some(version.into());
        c.data = Some([("version".to_string(), version.to_string())].into());
        c
    }

    fn versions(objects: &[watcher::Result<ConfigMap>]) -> Vec<String> {
        objects
            .iter()
            .map(|o| o.as_ref().unwrap())
            .map(|c| {
                format!(
                    "{}@{}",
                    c.metadata.name.as_deref().unwrap(),
                    c.metadata.resource_version.as_deref().unwrap()
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_relist_passes_on_its_objects_once_the_store_holds_them() {
        let (store, writer) = reflector::store();
        let events = vec![
            // Start-up list.
            Event::Init,
            Event::InitApply(object("a", "1")),
            Event::InitDone,
            Event::Apply(object("a", "2")),
            // A relist after the watch was lost: `a` changed meanwhile, `b` is new.
            Event::Init,
            Event::InitApply(object("a", "5")),
            Event::InitApply(object("b", "6")),
            Event::InitDone,
        ];
        let seen_in_store = store.clone();
        let triggers = applied_after_lists(
            futures::stream::iter(events.into_iter().map(Ok)).reflect(writer),
            store,
        );
        let triggered: Vec<_> = triggers
            .inspect(|o| {
                // What a reconcile of it reads is the version passed on.
                let o = o.as_ref().unwrap();
                let stored = seen_in_store
                    .get(&reflector::ObjectRef::from_obj(o))
                    .expect("in the store");
                assert_eq!(stored.metadata.resource_version, o.metadata.resource_version);
            })
            .collect()
            .await;
        let mut relisted = versions(&triggered[2..]);
        relisted.sort();
        assert_eq!(versions(&triggered[..2]), ["a@1", "a@2"]);
        assert_eq!(relisted, ["a@5", "b@6"]);
    }
}
