//! CPU parallelism for the student: whole jobs (a task's training, a batch's inference) on
//! separate threads, each op inside them single-threaded.
//!
//! candle parallelises inside each op (a spin-waiting thread pool for element-wise ops, rayon
//! for matmuls). MiniLM's ops are small (8 sentences × 60 pieces × 384), so on 2 cores
//! training kept about one core busy (user time ≈ wall time) and extraction 1.3, and a second
//! process made the spinning workers fight it. Running independent jobs side by side with
//! one thread per op keeps every core on useful work ([`init_single_threaded_ops`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Every core the process may use.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `threads`, or every core for 0.
pub fn threads_or_all(threads: usize) -> usize {
    if threads == 0 { available_threads() } else { threads }
}

/// Make candle's CPU ops single-threaded, unless the environment already chose
/// (`CANDLE_NUM_THREADS`, `RAYON_NUM_THREADS`). Call before any other thread starts: candle
/// reads these variables when its pools first start.
pub fn init_single_threaded_ops() {
    for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if std::env::var_os(var).is_none() {
            // SAFETY: called at the top of `main`, before any thread exists.
            unsafe { std::env::set_var(var, "1") };
        }
    }
}

/// `f` over every item on up to `threads` threads; results in item order. Every item runs
/// even after a failure (jobs are independent); the first error in item order is returned.
pub fn map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<R>>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = f(item);
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Internal("a parallel job did not run".into()))))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn results_keep_item_order_on_any_number_of_threads() {
        let items: Vec<u64> = (0..20).collect();
        for threads in [1, 2, 3, 64] {
            // Earlier items sleep longer, so they finish last.
            let out = map(&items, threads, |&i| {
                std::thread::sleep(Duration::from_millis(20 - i));
                Ok(i * i)
            })
            .unwrap();
            assert_eq!(out, items.iter().map(|i| i * i).collect::<Vec<_>>(), "{threads} threads");
        }
        assert!(map(&[] as &[u8], 2, |_| Ok(())).unwrap().is_empty());
    }

    #[test]
    fn every_job_runs_and_the_first_error_in_item_order_is_returned() {
        let ran = AtomicUsize::new(0);
        let err = map(&[1, 2, 3, 4], 2, |&i| {
            ran.fetch_add(1, Ordering::Relaxed);
            if i % 2 == 0 { Err(Error::Internal(format!("job {i}"))) } else { Ok(i) }
        })
        .unwrap_err();
        assert_eq!(ran.load(Ordering::Relaxed), 4);
        assert!(err.to_string().contains("job 2"), "{err}");
    }

    #[test]
    fn zero_means_every_core() {
        assert_eq!(threads_or_all(0), available_threads());
        assert_eq!(threads_or_all(3), 3);
    }
}
