//! The threads that compress pieces: one pool for the process, sized once (`--compress-threads`,
//! default one per core). The bytes never depend on its size.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

pub struct Pool {
    jobs: Mutex<VecDeque<Job>>,
    more: Condvar,
    threads: usize,
}

static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<Pool> = OnceLock::new();

/// Before the first compression; 0 means one thread per core.
pub fn set_threads(n: usize) {
    THREADS.store(n, Ordering::Relaxed);
}

pub fn get() -> &'static Pool {
    POOL.get_or_init(|| {
        let threads = match THREADS.load(Ordering::Relaxed) {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        for i in 0..threads {
            // Each thread waits in get() until this initialisation is done.
            std::thread::Builder::new().name(format!("compress-{i}")).spawn(|| get().work()).expect("cannot start a thread");
        }
        Pool { jobs: Mutex::default(), more: Condvar::new(), threads }
    })
}

impl Pool {
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on a pool thread; `urgent` ones (a reader waits for them) go first.
    pub fn submit(&self, urgent: bool, job: Job) {
        let mut jobs = self.jobs.lock().unwrap();
        if urgent {
            jobs.push_front(job);
        } else {
            jobs.push_back(job);
        }
        self.more.notify_one();
    }

    fn work(&self) {
        loop {
            let job = {
                let mut jobs = self.jobs.lock().unwrap();
                loop {
                    match jobs.pop_front() {
                        Some(j) => break j,
                        None => jobs = self.more.wait(jobs).unwrap(),
                    }
                }
            };
            job();
        }
    }
}
