//! The non-blocking log writer (issue 11 item 5): with a sink that blocks forever, logging
//! calls still return (lines beyond the bounded queue are dropped) and the drops are counted,
//! per writer and process-wide.

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use ron_transport::log_writer::{dropped_lines_total, NonBlocking};
use ron_transport::logging::{subscriber, LogFormat};

/// A sink whose first write never returns (a stuck stderr: a full pipe nobody reads).
struct Stuck;

impl Write for Stuck {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        loop {
            std::thread::park();
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const QUEUE: usize = 16;
const EVENTS: usize = 1000;

#[test]
fn a_stuck_sink_never_blocks_the_logging_thread_and_drops_are_counted() {
    let writer = NonBlocking::new(Stuck, QUEUE).unwrap();
    let probe = writer.clone();
    let before = dropped_lines_total();
    let sub = subscriber(LogFormat::Json, "info", writer).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    // The logging happens on its own thread so a regression (a blocking writer) fails this
    // test instead of hanging it.
    std::thread::spawn(move || {
        tracing::subscriber::with_default(sub, || {
            for i in 0..EVENTS {
                tracing::info!(target: "ron_transport", event = "handshake", i, "handshake failed");
            }
        });
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("logging calls blocked on a stuck sink");
    // At most the queue plus the one line the writer thread is stuck writing got through.
    let dropped = probe.dropped();
    assert!(
        dropped >= (EVENTS - QUEUE - 1) as u64,
        "dropped {dropped} of {EVENTS}"
    );
    assert!(dropped <= EVENTS as u64);
    assert!(dropped_lines_total() - before >= dropped);
}
