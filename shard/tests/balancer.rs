//! The accept balancer spreads connections from one client evenly over the shards.

mod common;

use std::sync::Arc;

use common::*;
use ron_shard::{bind, ConnOptions};

#[test]
fn two_shards_share_100_connections_evenly() {
    let Some(rt) = runtime(2) else { return };
    let hooks = Arc::new(EchoHooks::default());
    let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    rt.listen(l, ConnOptions::default(), hooks.clone()).unwrap();
    let mut conns = Vec::new();
    for i in 0..100u32 {
        let mut c = connect(addr);
        // Round-trip on each so every connection is established on its shard.
        write_frame(&mut c, &i.to_be_bytes());
        assert_eq!(read_frame(&mut c).unwrap(), i.to_be_bytes());
        conns.push(c);
    }
    let on = hooks.opened_on.lock().unwrap().clone();
    let on0 = on.iter().filter(|s| **s == 0).count();
    let on1 = on.iter().filter(|s| **s == 1).count();
    assert_eq!(on0 + on1, 100);
    assert!(
        (45..=55).contains(&on0),
        "shard 0 got {on0}, shard 1 got {on1}"
    );
    let stats = rt.stats();
    assert_eq!(stats[0].open + stats[1].open, 100);
    assert!((45..=55).contains(&stats[1].open));
    // Only shard 0 accepts; both adopt.
    assert_eq!((stats[0].accepted, stats[1].accepted), (100, 0));
    assert_eq!(stats[0].adopted + stats[1].adopted, 100);
}
