//! Ctrl-C for the long commands (import, upgrade-identifiers,
//! migrate-store): noted rather than obeyed, so that a command stops
//! between two steps it can go on from (a batch, a profile) and says where,
//! instead of dying midway.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, SignalKind};

/// Whether Ctrl-C was pressed since [`Interrupt::catch`].
pub struct Interrupt {
    caught: Arc<AtomicBool>,
    /// Waits for the signal on a thread of its own, so that it is noticed
    /// whatever the command does meanwhile: block on a synchronous copy,
    /// or run the service on a runtime of its own.
    watcher: Option<Runtime>,
}

impl Interrupt {
    /// From here on, Ctrl-C sets the flag instead of ending the process.
    pub fn catch() -> anyhow::Result<Interrupt> {
        let watcher = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("interrupt")
            .enable_all()
            .build()
            .context("catching Ctrl-C")?;
        let mut interrupt = {
            let _runtime = watcher.enter();
            signal(SignalKind::interrupt()).context("catching Ctrl-C")?
        };
        let caught = Arc::new(AtomicBool::new(false));
        let flag = caught.clone();
        watcher.spawn(async move {
            if interrupt.recv().await.is_some() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        Ok(Interrupt {
            caught,
            watcher: Some(watcher),
        })
    }

    /// Whether the command should stop at its next step.
    pub fn caught(&self) -> bool {
        self.caught.load(Ordering::SeqCst)
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        // Without waiting: the watcher may still be waiting for a signal,
        // and this may run inside the command's own runtime.
        if let Some(watcher) = self.watcher.take() {
            watcher.shutdown_background();
        }
    }
}
