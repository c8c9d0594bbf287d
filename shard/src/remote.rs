//! [`ConnRemote`]: the `Send + Sync` doorbell into one connection on its owning shard, and the
//! shard's wake queue it posts to ([`WakeSink`]). A connection is queued at most once until its
//! shard takes it; the shard's [`Doorbell`] is rung only while it is parked.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use crate::doorbell::Doorbell;
use crate::wake::WakeWord;

/// Where a shard takes wakes of its connections from (shared by every [`ConnRemote`] of it).
#[derive(Debug)]
pub(crate) struct WakeSink {
    /// The shard's index.
    pub(crate) id: usize,
    /// The shard's process-unique identity.
    pub(crate) uid: u64,
    pub(crate) tx: Sender<Arc<RemoteShared>>,
    pub(crate) bell: Arc<Doorbell>,
}

impl WakeSink {
    pub(crate) fn post(&self, r: Arc<RemoteShared>) {
        if self.tx.send(r).is_ok() {
            self.bell.ring();
        }
    }
}

/// A `Send + Sync` doorbell into one connection on its owning shard: [`ConnRemote::wake`]
/// ORs bits into the connection's wake word and, once per batch, rings the shard.
#[derive(Clone, Debug)]
pub struct ConnRemote(pub(crate) Arc<RemoteShared>);

#[derive(Debug)]
pub(crate) struct RemoteShared {
    pub(crate) shard: Arc<WakeSink>,
    pub(crate) key: (u32, u32),
    pub(crate) word: WakeWord,
    pub(crate) gone: AtomicBool,
}

impl ConnRemote {
    /// Wakes the handler with `bits` (delivered to [`ConnHandler::on_wake`]). Returns false if
    /// the connection is already gone.
    pub fn wake(&self, bits: u32) -> bool {
        let r = &self.0;
        if r.gone.load(Ordering::Acquire) {
            return false;
        }
        if r.word.post(bits) {
            r.shard.post(self.0.clone());
        }
        true
    }

    /// True once the connection has closed.
    pub fn is_gone(&self) -> bool {
        self.0.gone.load(Ordering::Acquire)
    }

    /// Owning shard index.
    pub fn shard(&self) -> usize {
        self.0.shard.id
    }
}
