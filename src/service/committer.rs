//! Group commit: one thread applies every write and flushes once per batch of
//! queued writes, then acknowledges them all.
//!
//! This is what makes a 2xx durable without a flush per request (the flush is
//! the expensive part), and, because there is one writer, what makes identity
//! resolution free of races: two signals about the same person are resolved one
//! after the other, never side by side.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::ServiceError;
use crate::store::Store;

/// Called once the batch containing the job is durable (or failed to be).
type Completion = Box<dyn FnOnce(Result<(), ()>) + Send>;
type Job = Box<dyn FnOnce(&dyn Store) -> Completion + Send>;

/// Jobs waiting beyond this make callers wait for a slot (back-pressure).
const QUEUE_DEPTH: usize = 16 * 1024;

#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl Committer {
    pub fn start(store: Arc<dyn Store>, max_group: usize) -> Committer {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("anamnesis-committer".into())
            .spawn(move || {
                let mut completions: Vec<Completion> = Vec::with_capacity(max_group);
                while let Some(first) = rx.blocking_recv() {
                    completions.push(first(&*store));
                    while completions.len() < max_group {
                        match rx.try_recv() {
                            Ok(job) => completions.push(job(&*store)),
                            Err(_) => break,
                        }
                    }
                    let started = Instant::now();
                    let flushed = store.flush();
                    metrics::histogram!("anamnesis_store_flush_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!("anamnesis_group_commit_size")
                        .record(completions.len() as f64);
                    let outcome = match flushed {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            tracing::error!(error = %e, "store flush failed; writes not acknowledged");
                            Err(())
                        }
                    };
                    for done in completions.drain(..) {
                        done(outcome);
                    }
                }
                if let Err(e) = store.flush() {
                    tracing::error!(error = %e, "final store flush failed");
                }
            })
            .expect("the committer thread starts");
        Committer { tx }
    }

    /// Runs `job` on the committer thread and answers once its changes are durable.
    pub async fn run<T, F>(&self, job: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, ServiceError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let wrapped: Job = Box::new(move |store: &dyn Store| {
            let result = job(store);
            Box::new(move |flushed: Result<(), ()>| {
                let result = match flushed {
                    Ok(()) => result,
                    Err(()) => Err(ServiceError::NotDurable),
                };
                // The caller may have gone away (client disconnected); the write stands.
                let _ = reply.send(result);
            })
        });
        self.tx
            .send(wrapped)
            .await
            .map_err(|_| ServiceError::ShuttingDown)?;
        answer.await.map_err(|_| ServiceError::ShuttingDown)?
    }

    /// Waits until every write queued before this call is durable.
    pub async fn sync(&self) -> Result<(), ServiceError> {
        self.run(|_| Ok(())).await
    }
}
