//! Waiting on observable state, and test logging.

use std::fmt::Display;
use std::time::Duration;

/// How often [`eventually`] asks again.
const POLL: Duration = Duration::from_millis(10);

/// Waits until `condition` holds, asking it again every 10 ms; fails the
/// test, naming `what`, once `deadline` has passed without it holding.
/// `what` is formatted only then, so it may show what the condition saw
/// last (a `Display` reading a cell the condition writes).
///
/// The condition is an async closure, so it may read a counter
/// (`async || metrics.in_flight() == 0`) or make a request
/// (`async || client.lookup(..).await.is_ok()`) alike.
pub async fn eventually(
    what: impl Display,
    deadline: Duration,
    condition: impl AsyncFnMut() -> bool,
) {
    eventually_every(what, deadline, POLL, condition).await;
}

/// [`eventually`] asking every `interval` instead: for a condition that is
/// costly to ask (one that spawns a process, say).
pub async fn eventually_every(
    what: impl Display,
    deadline: Duration,
    interval: Duration,
    mut condition: impl AsyncFnMut() -> bool,
) {
    let end = tokio::time::Instant::now() + deadline;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {deadline:?} waiting for: {what}"
        );
        tokio::time::sleep(interval).await;
    }
}

/// Logs to the test's captured output, filtered by `RUST_LOG`; the first
/// call in a test binary wins, later ones do nothing.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
