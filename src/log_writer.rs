//! A non-blocking log writer: formatted log lines go into a bounded queue that one writer
//! thread drains into the real sink (stderr by default). A logging call never waits on the
//! sink: when the queue is full the line is dropped and counted, so a slow or stuck stderr
//! cannot stall a shard or an async worker (a peer can trigger handshake-failure logs at will).
//!
//! Drops are counted per writer ([`NonBlocking::dropped`]) and process-wide
//! ([`dropped_lines_total`], documented in docs/metrics.md). This module owns no formatting:
//! [`crate::logging`] formats, this only moves bytes.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;

/// Lines queued towards the sink before new lines are dropped.
pub const DEFAULT_QUEUE_LINES: usize = 8192;

static DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because a non-blocking writer's queue was full, summed over every writer
/// in the process (monotonic).
pub fn dropped_lines_total() -> u64 {
    DROPPED_TOTAL.load(Ordering::Relaxed)
}

/// A [`MakeWriter`] whose writers never block: each event's bytes are queued as one line for
/// the writer thread, or dropped (and counted) when the queue is full. Cheap to clone.
#[derive(Clone, Debug)]
pub struct NonBlocking {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl NonBlocking {
    /// Starts a writer thread draining a queue of `capacity` lines (at least 1) into `sink`.
    /// The thread ends when every clone of the returned writer is dropped.
    pub fn new<W: Write + Send + 'static>(sink: W, capacity: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        std::thread::Builder::new()
            .name("ron-log-writer".into())
            .spawn(move || drain(sink, rx))?;
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Lines this writer (and its clones) dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn push(&self, line: Vec<u8>) {
        if line.is_empty() {
            return;
        }
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn drain<W: Write>(mut sink: W, rx: Receiver<Vec<u8>>) {
    // A failing sink loses the line; there is nowhere else to report it.
    while let Ok(line) = rx.recv() {
        let _ = sink.write_all(&line);
        // Whatever queued meanwhile, then one flush per burst.
        for line in rx.try_iter() {
            let _ = sink.write_all(&line);
        }
        let _ = sink.flush();
    }
}

/// One event's writer: buffers what the formatter writes and queues it when dropped.
#[derive(Debug)]
pub struct LineWriter {
    owner: NonBlocking,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.owner.push(std::mem::take(&mut self.buf));
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            owner: self.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);
    impl Write for Collect {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_reach_the_sink_in_order() {
        let sink = Collect::default();
        let w = NonBlocking::new(sink.clone(), 64).unwrap();
        for i in 0..10 {
            let mut lw = w.make_writer();
            writeln!(lw, "line {i}").unwrap();
        }
        for _ in 0..500 {
            if sink.0.lock().unwrap().len() >= 70 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let want: String = (0..10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
        assert_eq!(w.dropped(), 0);
    }
}
