//! The process's stop request: SIGTERM or Ctrl-C, as a future an app's
//! `run` takes and drains on.

use std::future::Future;

/// The SIGTERM handler could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("installing the SIGTERM handler: {0}")]
pub struct SignalError(#[source] pub std::io::Error);

/// Resolves on SIGTERM or Ctrl-C. The SIGTERM handler is installed by this
/// call, not when the future is first polled: from then on a SIGTERM is
/// kept for the future instead of killing the process undrained, so call
/// it where the process starts having something to drain.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, SignalError> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(SignalError)?;
    Ok(async move {
        #[cfg(unix)]
        let term = term.recv();
        #[cfg(not(unix))]
        let term = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term => {},
        }
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sigterm_after_the_call_resolves_the_future_instead_of_killing_the_process() {
        let stop = shutdown_signal().unwrap();
        // std has no kill(2); the `kill` command raises the signal.
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(5), stop)
            .await
            .expect("the SIGTERM resolved the future");
    }
}
