//! Shutdown: stop accepting, drain within a deadline, abort and count the rest, no fd leaks.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ron_shard::{bind, CloseReason, ConnOptions};

#[test]
fn drains_what_closes_and_aborts_the_rest() {
    let Some(rt) = runtime(2) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), hooks.clone()).unwrap();
    // Echo::on_drain closes connections with an even id; odd ones stay open.
    let mut conns = Vec::new();
    for i in 0..20u32 {
        let mut c = connect(addr);
        write_frame(&mut c, &i.to_be_bytes());
        read_frame(&mut c).unwrap();
        conns.push(c);
    }
    // Connection ids are assigned 1..=20 in accept order.
    let even = 10u64;
    let t0 = Instant::now();
    let report = rt.shutdown(Duration::from_millis(300)).wait();
    let took = t0.elapsed();
    eprintln!("even={even} report={report:?} took={took:?}");
    assert_eq!(report.drained, even, "{report:?}");
    assert_eq!(report.aborted, 20 - even);
    assert!(
        took >= Duration::from_millis(250),
        "deadline honoured: {took:?}"
    );
    let closes = hooks.closes.lock().unwrap().clone();
    assert_eq!(closes.len(), 20);
    assert_eq!(
        closes
            .iter()
            .filter(|r| **r == CloseReason::Shutdown)
            .count() as u64,
        20 - even
    );
    // No longer accepting.
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
    let s = total(&rt);
    assert_eq!((s.open, s.aborted, s.drained), (0, 20 - even, even));
}

#[test]
fn shutdown_with_nothing_open_is_immediate_and_drop_is_clean() {
    let Some(rt) = runtime(2) else { return };
    let r = rt.shutdown(Duration::from_secs(5)).wait();
    assert_eq!((r.drained, r.aborted), (0, 0));
    drop(rt);
    // A runtime dropped without an explicit shutdown also stops and joins its threads.
    let Some(rt) = runtime(1) else { return };
    drop(rt);
}
