//! One way for a step to run a copier operation (the bulk copy, a replay
//! round, the final delta): its progress is published to the job's
//! subscribers as it comes and handed to the step (which may persist a
//! watermark), and its end says why it stopped in the job's terms: a
//! cancelled copy is a paused job, or a lost lease.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::driver::{lease_lost, paused};
use super::options::JobProgress;
use super::record::PhaseKind;
use super::run::Run;
use super::Migrator;
use crate::error::{ErrorKind, Result};
use crate::mirror::{Copier, Progress};

type Operation = Pin<Box<dyn Future<Output = Result<Progress>> + Send>>;

/// A copier operation a step runs; see [`Migrator::track`].
pub(in crate::job) struct Tracked {
    job: String,
    phase: PhaseKind,
    round: Option<u32>,
    progress: watch::Receiver<Progress>,
    publish: watch::Sender<JobProgress>,
    pause: CancellationToken,
    operation: Operation,
    result: Option<Result<Progress>>,
}

impl Migrator {
    /// Starts `operation` with a copier that publishes its progress and
    /// stops when the run does.
    pub(in crate::job) fn track<F, Fut>(
        &self,
        run: &Run,
        job: &str,
        phase: PhaseKind,
        round: Option<u32>,
        operation: F,
    ) -> Tracked
    where
        F: FnOnce(Copier) -> Fut,
        Fut: Future<Output = Result<Progress>> + Send + 'static,
    {
        let (tx, rx) = watch::channel(Progress::default());
        let copier = Copier::new(self.options.copy.clone())
            .progress(tx)
            .cancel_on(run.lost.child_token());
        Tracked {
            job: job.to_owned(),
            phase,
            round,
            progress: rx,
            publish: self.progress.clone(),
            pause: self.pause.clone(),
            operation: Box::pin(operation(copier)),
            result: None,
        }
    }
}

impl Tracked {
    /// The next progress (published first), or `None` once the operation
    /// has ended. Progress comes first: a value published just before the
    /// operation ends is still seen.
    pub async fn next(&mut self) -> Option<Progress> {
        if self.result.is_some() {
            return None;
        }
        loop {
            tokio::select! {
                biased;
                changed = self.progress.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let p = self.progress.borrow_and_update().clone();
                    self.publish.send_replace(JobProgress {
                        job: self.job.clone(),
                        phase: self.phase,
                        copy: Some(p.clone()),
                        round: self.round,
                    });
                    return Some(p);
                }
                r = &mut self.operation => {
                    self.result = Some(r);
                    return None;
                }
            }
        }
    }

    /// Runs the operation to its end, publishing its progress.
    pub async fn finish(mut self) -> Result<Progress> {
        while self.next().await.is_some() {}
        self.result()
    }

    /// How the operation ended (once [`Tracked::next`] returned `None`): a
    /// cancelled one because the job was paused, or its lease lost. The
    /// operation (and the image handles it holds) is dropped first.
    pub fn result(self) -> Result<Progress> {
        let Tracked {
            job,
            pause,
            operation,
            result,
            ..
        } = self;
        drop(operation);
        match result.expect("the operation ended") {
            Err(e) if e.kind() == ErrorKind::Cancelled => Err(if pause.is_cancelled() {
                paused(&job)
            } else {
                lease_lost(&job)
            }),
            other => other,
        }
    }
}
