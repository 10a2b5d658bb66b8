//! Whether the API server streams a watch's initial objects ("watch list", KEP-3157: on by
//! default from Kubernetes 1.34, off in 1.33, absent before 1.27).
//!
//! A paginated or `resourceVersion=0` LIST makes the API server encode every object into one
//! response, which the client holds whole before it decodes any of it: with 100,000
//! RemoteAssistances about 130 MB, several seconds to serve on a 2-core server and as long
//! again to read. A streaming list sends the same objects as watch events from the API server's cache,
//! decoded as they arrive, with no such buffer. Servers that do not have it refuse the request
//! (422) or ignore the parameter (no end-of-initial-events bookmark), so it is asked once at
//! start, with a watch that matches nothing, and used only when the server answers as
//! KEP-3157 says.
//!
//! A streaming list ends with a bookmark. If a server never sent it, kube-runtime's watcher
//! would wait until the watch's idle timeout (about five minutes) with the cache stuck before
//! the list: [`with_stall_fallback`] gives such a list up after [`STALL_LIMIT`] and lists
//! plainly from then on.

use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, WatchEvent, WatchParams};
use kube::runtime::watcher;
use tracing::{debug, info, warn};

use crate::resource::RemoteAssistance;

/// A label no object carries: the probe watch matches nothing.
const NO_OBJECT: &str = "workspace.assist.dev/streaming-list-probe";

/// The annotation of the bookmark that ends the initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// How long the probe waits for that bookmark: a server that ignores the parameter sends none.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the API server once whether it streams initial lists, for RemoteAssistances in the
/// watched scope; logs the answer.
pub async fn supported(api: &Api<RemoteAssistance>) -> bool {
    let params = WatchParams::streaming_lists()
        .labels(NO_OBJECT)
        .timeout(PROBE_TIMEOUT.as_secs() as u32);
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        let events = api.watch(&params, "0").await?;
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.try_next().await? {
            if let WatchEvent::Bookmark(bookmark) = event
                && bookmark
                    .metadata
                    .annotations
                    .get(INITIAL_EVENTS_END)
                    .is_some_and(|v| v == "true")
            {
                return Ok::<bool, kube::Error>(true);
            }
        }
        Ok(false)
    })
    .await;
    match answer {
        Ok(Ok(true)) => {
            info!("the API server streams initial lists: the watches start with a streaming list");
            return true;
        }
        Ok(Err(e)) => {
            info!(answer = %e, "the API server does not stream initial lists: the watches start with a list");
        }
        Ok(Ok(false)) | Err(_) => {
            info!("the API server does not stream initial lists: the watches start with a list");
        }
    }
    false
}

/// The watcher configuration with the initial list strategy the server supports.
pub fn initial_list(config: watcher::Config, streaming: bool) -> watcher::Config {
    if streaming {
        config.streaming_lists()
    } else {
        config
    }
}

/// How long a streaming initial list may send nothing before it is given up for a plain list.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// The events of the watch `start(streaming)` starts. While a streaming initial list is under
/// way (from `Init` to `InitDone`), an item is due every [`STALL_LIMIT`]; when none comes, the
/// watch is started again with a plain list, and keeps plain lists from then on. An error ends
/// the wait (the watcher's backoff may sleep longer; its retry begins with a new `Init`).
pub fn with_stall_fallback<K, F>(
    streaming: bool,
    what: &'static str,
    start: F,
) -> BoxStream<'static, watcher::Result<watcher::Event<K>>>
where
    K: Send + 'static,
    F: Fn(bool) -> BoxStream<'static, watcher::Result<watcher::Event<K>>> + Send + 'static,
{
    struct Watch<K, F> {
        events: BoxStream<'static, watcher::Result<watcher::Event<K>>>,
        streaming: bool,
        listing: bool,
        start: F,
    }
    let first = Watch {
        events: start(streaming),
        streaming,
        listing: false,
        start,
    };
    futures::stream::unfold(first, move |mut watch| async move {
        loop {
            let item = if watch.streaming && watch.listing {
                match tokio::time::timeout(STALL_LIMIT, watch.events.next()).await {
                    Ok(item) => item,
                    Err(_) => {
                        warn!(
                            watch = what,
                            stalled_for_s = STALL_LIMIT.as_secs(),
                            "the streaming list stalled; listing plainly from now on"
                        );
                        watch.events = (watch.start)(false);
                        watch.streaming = false;
                        watch.listing = false;
                        continue;
                    }
                }
            } else {
                watch.events.next().await
            };
            match &item {
                Some(Ok(watcher::Event::Init)) => watch.listing = true,
                Some(Ok(watcher::Event::InitDone)) => {
                    debug!(watch = what, streaming = watch.streaming, "initial list complete");
                    watch.listing = false;
                }
                Some(Err(_)) => watch.listing = false,
                _ => {}
            }
            return item.map(|item| (item, watch));
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use watcher::Event;

    type Events = BoxStream<'static, watcher::Result<Event<u32>>>;

    fn plain() -> Events {
        stream::iter([Event::Init, Event::InitApply(1), Event::InitDone].map(Ok)).boxed()
    }

    fn kinds(events: &[watcher::Result<Event<u32>>]) -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{:?}", e.as_ref().unwrap()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_list_that_stalls_is_replaced_by_a_plain_list() {
        // The objects come, the end-of-list bookmark never does.
        let start = |streaming: bool| -> Events {
            if streaming {
                stream::iter([Event::Init, Event::InitApply(1)].map(Ok))
                    .chain(stream::pending())
                    .boxed()
            } else {
                plain()
            }
        };
        let started = tokio::time::Instant::now();
        let events = tokio::time::timeout(
            STALL_LIMIT * 3,
            with_stall_fallback(true, "test", start)
                .take(5)
                .collect::<Vec<_>>(),
        )
        .await
        .expect("the stalled list was given up");
        assert_eq!(
            kinds(&events),
            ["Init", "InitApply(1)", "Init", "InitApply(1)", "InitDone"]
        );
        assert_eq!(
            started.elapsed(),
            STALL_LIMIT,
            "given up after the stall limit, not sooner"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_streaming_list_that_keeps_sending_is_kept() {
        let start = |streaming: bool| -> Events {
            assert!(streaming, "no fallback to a plain list");
            let slow = stream::iter(1..=3).then(|i| async move {
                tokio::time::sleep(STALL_LIMIT - Duration::from_secs(1)).await;
                Ok(Event::InitApply(i))
            });
            stream::once(async { Ok(Event::Init) })
                .chain(slow)
                .chain(stream::once(async { Ok(Event::InitDone) }))
                .chain(stream::pending())
                .boxed()
        };
        let events: Vec<_> = with_stall_fallback(true, "test", start).take(5).collect().await;
        assert_eq!(
            kinds(&events),
            ["Init", "InitApply(1)", "InitApply(2)", "InitApply(3)", "InitDone"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_watches_and_plain_lists_are_never_cut() {
        let start = |_: bool| -> Events { plain().chain(stream::pending()).boxed() };
        let mut events = with_stall_fallback(true, "test", start);
        for _ in 0..3 {
            events.next().await;
        }
        assert!(
            tokio::time::timeout(STALL_LIMIT * 10, events.next())
                .await
                .is_err(),
            "after the list, silence is a quiet watch"
        );
        let mut plain_only = with_stall_fallback(false, "test", |_: bool| -> Events {
            stream::once(async { Ok(Event::Init) })
                .chain(stream::pending())
                .boxed()
        });
        plain_only.next().await;
        assert!(
            tokio::time::timeout(STALL_LIMIT * 10, plain_only.next())
                .await
                .is_err(),
            "a plain list is not cut"
        );
    }
}
