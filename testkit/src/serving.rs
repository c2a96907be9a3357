//! A server running on a task until told to stop.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What a server's `run` waits on to shut down: it resolves once
/// [`Serving::stop`] is called, or the [`Serving`] is dropped.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server's `run(shutdown)` on its own task (locsvc's `App::run`, the
/// shim's), and the means to stop it and wait for it.
pub struct Serving<T> {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<T>>,
}

impl<T: Send + 'static> Serving<T> {
    /// Spawns `run(signal)`, typically `|signal| app.run(signal)`.
    pub fn spawn<F>(run: impl FnOnce(StopSignal) -> F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async move {
            let _ = rx.await;
        })));
        Self {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Signals the stop and waits until `run` has returned; its output, or
    /// `None` when it was stopped before.
    pub async fn stop(&mut self) -> Option<T> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take()?;
        Some(task.await.expect("the server's task ends without a panic"))
    }
}
