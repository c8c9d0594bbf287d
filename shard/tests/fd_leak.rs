//! 10,000 open/close cycles leave the process descriptor count at its baseline.

mod common;

use std::sync::Arc;

use common::*;
use ron_shard::{bind, ConnOptions};

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn ten_thousand_cycles_do_not_leak_fds() {
    let Some(rt) = runtime(2) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), hooks.clone()).unwrap();
    // Warm up once so lazily created descriptors exist before the baseline.
    {
        let mut c = connect(addr);
        write_frame(&mut c, b"warm");
        read_frame(&mut c).unwrap();
    }
    eventually("warm-up closed", || total(&rt).closed == 1);
    let baseline = fd_count();
    const N: u64 = 10_000;
    for i in 0..N {
        let mut c = connect(addr);
        if i % 10 == 0 {
            // Every tenth does a round trip; the others close right away (some before the
            // server even adopted them).
            write_frame(&mut c, b"x");
            read_frame(&mut c).unwrap();
        }
        drop(c);
    }
    eventually("all closed", || total(&rt).closed == N + 1);
    let s = total(&rt);
    assert_eq!((s.open, s.accepted), (0, N + 1));
    eventually("fd count back to baseline", || fd_count() <= baseline);
    assert_eq!(fd_count(), baseline);
}
