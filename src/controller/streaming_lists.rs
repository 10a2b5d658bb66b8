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

use std::time::Duration;

use futures::TryStreamExt;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::runtime::watcher;
use tracing::info;

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
    let params = WatchParams::streaming_lists().labels(NO_OBJECT).timeout(PROBE_TIMEOUT.as_secs() as u32);
    let answer = tokio::time::timeout(PROBE_TIMEOUT, async {
        let events = api.watch(&params, "0").await?;
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.try_next().await? {
            if let WatchEvent::Bookmark(bookmark) = event {
                if bookmark.metadata.annotations.get(INITIAL_EVENTS_END).is_some_and(|v| v == "true") {
                    return Ok::<bool, kube::Error>(true);
                }
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
        Ok(Err(e)) => info!(answer = %e, "the API server does not stream initial lists: the watches start with a list"),
        Ok(Ok(false)) | Err(_) => info!("the API server does not stream initial lists: the watches start with a list"),
    }
    false
}

/// The watcher configuration with the initial list strategy the server supports.
pub fn initial_list(config: watcher::Config, streaming: bool) -> watcher::Config {
    if streaming { config.streaming_lists() } else { config }
}
