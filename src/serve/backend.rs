//! The model on its own `std::thread` (after TEI's `backends/src/lib.rs` `BackendThread`):
//! HTTP handlers send a request through a bounded channel and read its [`Event`]s from an
//! unbounded one, so the async runtime never runs a forward pass and a slow reader never
//! stalls the batch (a request produces at most `n × max_tokens` events).
//!
//! The thread does continuous batching: between two forward passes it admits queued requests
//! while their `n` choices fit in `max_batch`, and every pass advances all running sequences
//! by one token (a newly admitted request's whole prompt joins the others' decode step). A
//! request whose client has gone away is dropped before the next pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use crate::llm::{Delta, GenerateRequest, Generation, Sequence, TeacherLlm, TeacherLlmConfig};
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

/// What the model thread reports about one request, in this order: `Started` once, then per
/// choice any number of `Delta`s (streaming requests only) and one `Finished`. The channel
/// closes after the last choice finishes; an `Err` ends it early.
#[derive(Debug)]
pub enum Event {
    /// Admitted: the prompt is tokenized and fits.
    Started,
    /// New text of choice `choice`.
    Delta { choice: usize, delta: Delta },
    /// Choice `choice` is done (its whole text and logprobs, also when streamed).
    Finished { choice: usize, generation: Generation },
}

/// The receiving end of a request's events.
pub type Events = mpsc::UnboundedReceiver<Result<Event, BackendError>>;
type EventSender = mpsc::UnboundedSender<Result<Event, BackendError>>;

struct Job {
    request: GenerateRequest,
    stream: bool,
    events: EventSender,
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
    /// Most sequences decoded together: a request's `n` may not exceed it.
    pub max_batch: usize,
}

impl Backend {
    /// Load the model on a new thread and wait until it is ready (seconds for the 1.5B
    /// teacher). Blocking: call from `spawn_blocking` in async code.
    pub fn start(config: TeacherLlmConfig, max_batch: usize, max_queue: usize) -> Result<Self> {
        let (sender, receiver) = mpsc::channel(max_queue.max(1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let max_batch = max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name("teacher-model".into())
            .spawn(move || match TeacherLlm::load(&config) {
                Ok(teacher) => {
                    let _ = ready_tx.send(Ok((teacher.model_id().to_string(), teacher.context_length())));
                    serve(teacher, receiver, max_batch, &thread_stop);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the model thread: {e}")))?;
        let (model_id, context_length) =
            ready_rx.recv().map_err(|_| Error::Internal("the model thread died while loading".into()))??;
        Ok(Self { sender, max_queue, stop, thread: Some(thread), model_id, context_length, max_batch })
    }

    /// Queue `request` (`n` ≤ `max_batch`); with `stream`, text arrives as `Delta` events as
    /// it is generated. Fails at once when the queue is full.
    pub fn submit(&self, request: GenerateRequest, stream: bool) -> Result<Events, BackendError> {
        let (events, receiver) = mpsc::unbounded_channel();
        self.sender.try_send(Job { request, stream, events }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BackendError::Overloaded(self.max_queue),
            mpsc::error::TrySendError::Closed(_) => BackendError::Stopped,
        })?;
        Ok(receiver)
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

/// Where a running sequence's events go. Every choice holds a clone of its request's sender,
/// so the request's channel closes when its last choice is done or dropped.
struct Sink {
    events: EventSender,
    stream: bool,
}

/// The running sequences and, index for index, their sinks.
#[derive(Default)]
struct Running {
    sequences: Vec<Sequence>,
    sinks: Vec<Sink>,
}

impl Running {
    /// Tokenize and admit a job, or answer it with why it cannot run.
    fn admit(&mut self, teacher: &mut TeacherLlm, job: Job) {
        match teacher.start(&job.request) {
            Ok(choices) => {
                let _ = job.events.send(Ok(Event::Started));
                for sequence in choices {
                    self.sinks.push(Sink { events: job.events.clone(), stream: job.stream });
                    self.sequences.push(sequence);
                }
            }
            Err(e) => {
                let _ = job.events.send(Err(e.into()));
            }
        }
    }

    fn remove(&mut self, i: usize) -> (Sequence, Sink) {
        (self.sequences.swap_remove(i), self.sinks.swap_remove(i))
    }

    fn len(&self) -> usize {
        self.sequences.len()
    }
}

/// The model thread's loop: admit, step, report, until the channel closes or `stop` is set.
fn serve(mut teacher: TeacherLlm, mut receiver: mpsc::Receiver<Job>, max_batch: usize, stop: &AtomicBool) {
    let mut running = Running::default();
    // A job taken off the queue whose choices do not fit in the batch yet.
    let mut waiting: Option<Job> = None;
    while !stop.load(Ordering::Relaxed) {
        if running.len() == 0 && waiting.is_none() {
            match receiver.blocking_recv() {
                Some(job) => waiting = Some(job),
                None => return,
            }
        }
        loop {
            let job = match waiting.take() {
                Some(job) => job,
                None => match receiver.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            if running.len() > 0 && running.len() + job.request.n > max_batch {
                waiting = Some(job);
                break;
            }
            running.admit(&mut teacher, job);
        }
        // Drop requests whose client went away (timeout, cancelled), newest first.
        for i in (0..running.len()).rev() {
            if running.sinks[i].events.is_closed() {
                running.remove(i);
            }
        }
        if let Err(e) = teacher.step(&mut running.sequences) {
            tracing::error!("teacher forward failed for {} sequences: {e}", running.len());
            let message = e.to_string();
            for sink in running.sinks.drain(..) {
                let _ = sink.events.send(Err(Error::Internal(format!("generation failed: {message}")).into()));
            }
            running.sequences.clear();
            continue;
        }
        for i in (0..running.len()).rev() {
            let (sequence, sink) = (&mut running.sequences[i], &running.sinks[i]);
            let choice = sequence.choice();
            if sink.stream {
                if let Some(delta) = sequence.take_delta() {
                    let _ = sink.events.send(Ok(Event::Delta { choice, delta }));
                }
            }
            if sequence.is_finished() {
                let (sequence, sink) = running.remove(i);
                let generation = teacher.finish(sequence);
                let _ = sink.events.send(Ok(Event::Finished { choice, generation }));
            }
        }
    }
}
