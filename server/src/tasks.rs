//! The server's long-lived tasks (catch-up, mempool, ZMQ, listeners, peers, status line), run
//! under supervision: each is meant to run until the process ends, so one that returns or panics
//! is a failure the process exits on (non-zero, with the task named), for its service manager to
//! restart, rather than a server that goes on serving a frozen tip or a dead listener.

use std::future::Future;

use anyhow::anyhow;
use tokio::task::JoinSet;
use tracing::error;

#[derive(Default)]
pub struct Tasks {
    set: JoinSet<&'static str>,
}

impl Tasks {
    /// Runs `task`, named `name` in the error if it ever ends.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.set.spawn(async move {
            task.await;
            name
        });
    }

    /// Waits for the first task to end (never, while all is well) and says which and how.
    pub async fn first_failure(&mut self) -> anyhow::Error {
        let e = match self.set.join_next().await {
            None => anyhow!("no background task was started"),
            Some(Ok(name)) => anyhow!("the {name} task ended"),
            Some(Err(e)) if e.is_panic() => anyhow!("a background task panicked: {e}"),
            Some(Err(e)) => anyhow!("a background task was cancelled: {e}"),
        };
        error!("{e:#}; stopping");
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_or_panics_is_reported() {
        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("short", async {});
        assert_eq!(tasks.first_failure().await.to_string(), "the short task ended");

        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("broken", async { panic!("boom") });
        let e = tasks.first_failure().await.to_string();
        assert!(e.contains("panicked"), "{e}");
    }
}
