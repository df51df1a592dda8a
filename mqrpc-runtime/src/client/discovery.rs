//! Finding every server of every service under a prefix.

use std::time::Duration;

use crate::protocol::builtins::ServiceInfo;

/// Every server of every service under `prefix` that answers `_info`
/// within `within`: discovery without a registry. It always waits the
/// whole `within` (it cannot know how many servers there are), unless no
/// server at all listens under `prefix` and the broker says so at once
/// (Mosquitto's "no matching subscribers"). A server whose notice
/// that it is gone (PROTOCOL.md, "Server gone") arrives within `within`
/// is not listed, even if it answered before.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mqrpc::Error> {
/// use std::time::Duration;
/// let conn = mqrpc::Connection::from_env_or_embedded().await?;
/// let found = mqrpc::discover(&conn, "mqrpc", Duration::from_millis(200)).await?;
/// assert!(found.is_empty()); // nobody serves anything yet
/// # Ok(()) }
/// ```
pub async fn discover(
    conn: &crate::Connection,
    prefix: &str,
    within: Duration,
) -> Result<Vec<ServiceInfo>, crate::Error> {
    use futures_util::StreamExt;
    let options = crate::ClientOptions::default()
        .prefix(prefix)
        .timeout(within);
    let everyone = crate::Client::new(conn, crate::protocol::ANY_SERVICE, options).await?;
    let mut gone_notices = everyone.caller.gone_notices();
    let answers = everyone.info().await?;
    let mut found = Vec::new();
    let mut answers = std::pin::pin!(answers);
    while let Some((_, info)) = answers.next().await {
        match info {
            Ok(info) => found.push(info),
            // Nobody listens: nothing to find.
            Err(crate::Error::NoResponder { .. }) => break,
            Err(e) => return Err(e),
        }
    }
    let mut gone = std::collections::HashSet::new();
    loop {
        match gone_notices.try_recv() {
            Ok(instance) => {
                gone.insert(instance);
            }
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    found.retain(|info| !gone.contains(info.instance.as_str()));
    found.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    Ok(found)
}
