//! The model on its own `std::thread` (after TEI's `backends/src/lib.rs` `BackendThread`):
//! HTTP handlers send a request through a bounded channel and await the reply on a oneshot,
//! so the async runtime never runs a forward pass.
//!
//! The thread does continuous batching: between two forward passes it admits queued requests
//! up to `max_batch`, and every pass advances all running sequences by one token (a newly
//! admitted request's whole prompt joins the others' decode step). A request whose client
//! has gone away is dropped before the next pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::model::teacher_llm::{GenerateRequest, Generation, Sequence, TeacherLlm, TeacherLlmConfig};
use crate::{Error, Result};

/// Why a request got no generation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The queue is full: the client should retry later (HTTP 429).
    #[error("the teacher is overloaded: {0} requests queued")]
    Overloaded(usize),
    /// The model thread has stopped (shutdown or a crash).
    #[error("the teacher model thread has stopped")]
    Stopped,
    /// The request itself failed (e.g. a prompt longer than the context).
    #[error(transparent)]
    Generate(#[from] Error),
}

struct Job {
    request: GenerateRequest,
    reply: oneshot::Sender<Result<Generation>>,
}

/// Handle to the model thread. Cheap to share behind an `Arc`; the thread stops when the
/// handle is dropped (after abandoning running sequences).
pub struct Backend {
    sender: mpsc::Sender<Job>,
    max_queue: usize,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub model_id: String,
    pub context_length: usize,
}

impl Backend {
    /// Load the model on a new thread and wait until it is ready (seconds for the 1.5B
    /// teacher). Blocking: call from `spawn_blocking` in async code.
    pub fn start(config: TeacherLlmConfig, max_batch: usize, max_queue: usize) -> Result<Self> {
        let (sender, receiver) = mpsc::channel(max_queue.max(1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("teacher-model".into())
            .spawn(move || match TeacherLlm::load(&config) {
                Ok(teacher) => {
                    let _ = ready_tx.send(Ok((teacher.model_id().to_string(), teacher.context_length())));
                    serve(teacher, receiver, max_batch.max(1), &thread_stop);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the model thread: {e}")))?;
        let (model_id, context_length) =
            ready_rx.recv().map_err(|_| Error::Internal("the model thread died while loading".into()))??;
        Ok(Self { sender, max_queue, stop, thread: Some(thread), model_id, context_length })
    }

    /// Queue `request` and wait for its generation.
    pub async fn generate(&self, request: GenerateRequest) -> Result<Generation, BackendError> {
        let (reply, answer) = oneshot::channel();
        self.sender.try_send(Job { request, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BackendError::Overloaded(self.max_queue),
            mpsc::error::TrySendError::Closed(_) => BackendError::Stopped,
        })?;
        Ok(answer.await.map_err(|_| BackendError::Stopped)??)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The thread exits once the channel is closed (when the last sender, ours, goes) or
        // at its next step; do not wait for it here, a step can take a second.
        drop(self.thread.take());
    }
}

type Reply = oneshot::Sender<Result<Generation>>;

/// Tokenize and admit a job, or answer it with why it cannot run.
fn admit(teacher: &mut TeacherLlm, job: Job, sequences: &mut Vec<Sequence>, replies: &mut Vec<Reply>) {
    match teacher.start(&job.request) {
        Ok(sequence) => {
            sequences.push(sequence);
            replies.push(job.reply);
        }
        Err(e) => {
            let _ = job.reply.send(Err(e));
        }
    }
}

/// The model thread's loop: admit, step, reply, until the channel closes or `stop` is set.
fn serve(mut teacher: TeacherLlm, mut receiver: mpsc::Receiver<Job>, max_batch: usize, stop: &AtomicBool) {
    let mut sequences: Vec<Sequence> = Vec::new();
    let mut replies: Vec<Reply> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if sequences.is_empty() {
            match receiver.blocking_recv() {
                Some(job) => admit(&mut teacher, job, &mut sequences, &mut replies),
                None => return,
            }
        }
        while sequences.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => admit(&mut teacher, job, &mut sequences, &mut replies),
                Err(_) => break,
            }
        }
        // Drop requests whose client went away (timeout, cancelled), newest first.
        for i in (0..sequences.len()).rev() {
            if replies[i].is_closed() {
                sequences.swap_remove(i);
                replies.swap_remove(i);
            }
        }
        if let Err(e) = teacher.step(&mut sequences) {
            tracing::error!("teacher forward failed for {} sequences: {e}", sequences.len());
            let message = e.to_string();
            for reply in replies.drain(..) {
                let _ = reply.send(Err(Error::Internal(format!("generation failed: {message}"))));
            }
            sequences.clear();
            continue;
        }
        for i in (0..sequences.len()).rev() {
            if sequences[i].is_finished() {
                let generation = teacher.finish(sequences.swap_remove(i));
                let _ = replies.swap_remove(i).send(generation);
            }
        }
    }
}
