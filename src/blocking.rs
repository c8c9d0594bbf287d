//! Loader threads: where blocking work goes so it never runs on an async worker or a shard
//! (spec/CONCURRENCY.md §1: no blocking syscalls on the runtime). File reads of certificates,
//! keys and CA bundles, OS trust roots and name resolution are run here, and awaited through a
//! runtime-agnostic one-shot channel, so the same call works from a Tokio task and from a task
//! on a uring shard.
//!
//! The pool is small and fixed ([`LOADER_THREADS`]), started on first use, and lives for the
//! process. Work items are independent; a panicking item is reported as an error to its caller
//! and the thread goes on.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::error::TransportError;

/// Threads in the loader pool.
pub const LOADER_THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send + 'static>;

fn queue() -> &'static Mutex<mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..LOADER_THREADS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ron-loader-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(target: "ron_transport", event = "loader", error = %e,
                    "could not start a loader thread");
            }
        }
        Mutex::new(tx)
    })
}

/// Runs `f` on a loader thread and resolves to its result. The returned future needs no
/// particular runtime. A panic in `f` becomes [`TransportError::Unsupported`] naming `what`.
pub fn run<T, F>(what: &'static str, f: F) -> impl Future<Output = Result<T, TransportError>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let out = catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(out.ok());
    });
    let queued = queue()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .send(job)
        .is_ok();
    async move {
        let lost = || TransportError::Unsupported {
            what: format!("{what}: the loader thread failed"),
        };
        if !queued {
            return Err(lost());
        }
        rx.await.ok().flatten().ok_or_else(lost)
    }
}

/// Resolves `host:port` on a loader thread: every address, in the resolver's order. An empty
/// answer is an `Io` error of kind `NotFound`, naming the host.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, TransportError> {
    let name = host.to_owned();
    let addrs = run("name resolution", move || {
        (name.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect::<Vec<_>>)
    })
    .await?
    .map_err(TransportError::Io)?;
    if addrs.is_empty() {
        return Err(TransportError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host}: no addresses"),
        )));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_off_the_calling_thread_and_survives_a_panic() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let me = std::thread::current().id();
        let other = rt
            .block_on(run("test", move || std::thread::current().id() != me))
            .unwrap();
        assert!(other);
        let e = rt
            .block_on(run("boom", || -> u8 { panic!("loader job panics") }))
            .unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(rt.block_on(run("after", || 7)).unwrap(), 7);
    }

    #[test]
    fn resolves_localhost_and_names_a_missing_host() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let addrs = rt.block_on(resolve("localhost", 9)).unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        let e = rt.block_on(resolve("no-such-host.invalid", 9)).unwrap_err();
        assert_eq!(e.kind(), "io");
    }
}
