//! Per-shard counters: plain cells written only by the owning shard (a Relaxed load + store,
//! never a contended read-modify-write on the hot path) and read by any thread at scrape time
//! as a [`StatsSnapshot`]. Names here are mechanism-level; metric names belong to the caller.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// A shard's live counter cells (owner-written).
        #[derive(Debug, Default)]
        pub(crate) struct ShardStats {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A point-in-time copy of one shard's counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct StatsSnapshot {
            /// Shard index.
            pub shard: usize,
            $($(#[$doc])* pub $name: u64,)*
        }

        impl ShardStats {
            pub(crate) fn snapshot(&self, shard: usize) -> StatsSnapshot {
                StatsSnapshot {
                    shard,
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        impl StatsSnapshot {
            /// Field-wise sum (for totals across shards).
            pub fn merge(mut self, other: &Self) -> Self {
                $(self.$name += other.$name;)*
                self
            }
        }
    };
}

stats! {
    /// Connections accepted by this shard's listeners (before admission).
    accepted,
    /// Accepted connections refused by the admission hook (closed immediately).
    rejected,
    /// Connections handed to this shard by the balancer (including from itself).
    adopted,
    /// Connections established by dialing from this shard.
    dialed,
    /// Dials that failed (error or timeout).
    dial_failed,
    /// Connections currently open on this shard (gauge).
    open,
    /// Connections closed on this shard.
    closed,
    /// Frames received.
    frames_in,
    /// Frames queued for sending.
    frames_out,
    /// Payload+header bytes received.
    bytes_in,
    /// Bytes written to sockets.
    bytes_out,
    /// Connections closed for a frame above the ceiling.
    too_large,
    /// Read timeouts.
    timeout_read,
    /// Write timeouts.
    timeout_write,
    /// Idle timeouts.
    timeout_idle,
    /// Dial timeouts.
    timeout_dial,
    /// Connections that closed during a shutdown drain before the deadline.
    drained,
    /// Connections aborted at the shutdown deadline.
    aborted,
    /// Multishot receives that ran out of provided buffers (re-armed later).
    recv_no_buffers,
    /// The shard thread itself panicked (it is dead: see `Runtime::dead_shards`).
    shard_panics,
    /// Panics in handler callbacks or hooks, contained to their connection (which was aborted;
    /// a panicking admission hook refuses its peer).
    handler_panics,
    /// In-place echoes copied out of their receive buffer instead of holding it, because the
    /// connection's share of the provided-buffer ring (or the shard's reserve) was used up.
    echo_copied,
    /// Reads paused because queued output reached the high-water mark (the multishot
    /// receive is cancelled; it is re-armed once output drains below half of that mark).
    recv_paused,
    /// Receive completions that went straight into a frame's own buffer (direct receive).
    recv_direct,
    /// Connections switched from the provided-buffer ring to direct receives.
    recv_direct_switches,
    /// Fresh direct receives cancelled because the peer went quiet (the connection went back
    /// to the ring, freeing the buffer).
    recv_direct_idle,
    /// Sends submitted as zero-copy (SENDMSG_ZC).
    sends_zc,
    /// Send submissions (each may carry several coalesced frames).
    send_submissions,
    /// Receive completions carrying data.
    recv_completions,
    /// Frames delivered in place (no copy).
    frames_in_place,
    /// TLS handshakes completed.
    tls_handshakes,
    /// TLS handshakes that failed (TLS error, timeout, peer gone).
    tls_handshake_failed,
    /// TLS records decrypted in place in a receive buffer.
    tls_records_in_place,
    /// Receive completions whose bytes had to be assembled (a record spanning buffers).
    tls_assembled,
    /// TLS encrypt passes (rustls records: each seals up to `chunk_bytes` of plaintext; own
    /// record layer: one per record sealed in place).
    tls_encrypt_passes,
    /// TLS connections whose handshake handed the records to the own record layer.
    tls_record_layer,
    /// TLS KeyUpdates sent (answers to the peer, or before the confidentiality limit).
    tls_key_updates_sent,
    /// TLS KeyUpdates received.
    tls_key_updates_received,
    /// QUIC: UDP datagrams received on this shard's sockets (GRO batches counted per datagram).
    quic_datagrams_in,
    /// QUIC: receive completions that carried a GRO batch of more than one datagram.
    quic_gro_batches,
    /// QUIC: UDP datagrams sent (GSO batches counted per datagram).
    quic_datagrams_out,
    /// QUIC: `sendmsg` calls that carried a `UDP_SEGMENT` batch of more than one datagram.
    quic_gso_sends,
    /// QUIC: datagrams this shard received for a connection another shard owns, forwarded there.
    quic_forwarded,
    /// QUIC: forwarded datagrams this shard received from another shard.
    quic_forwarded_in,
    /// QUIC: datagrams dropped before quinn-proto (malformed, truncated, foreign short-header
    /// ids, a full forwarding queue).
    quic_dropped,
    /// QUIC: connection attempts answered with a stateless Retry (address validation).
    quic_retries,
    /// QUIC: connection attempts refused before any connection state (admission, shutdown).
    quic_refused,
    /// QUIC: connections currently held by this shard (gauge).
    quic_conns,
    /// QUIC: handshakes completed.
    quic_handshakes,
    /// QUIC: `sendmsg` failures.
    quic_send_errors,
    /// Tasks spawned on this shard's executor.
    tasks_spawned,
    /// Task polls made by this shard's executor.
    task_polls,
    /// Tasks that panicked (dropped; the shard kept running).
    task_panics,
    /// Eventfd writes made to wake this shard (by any thread).
    doorbell_rings,
    /// Entries on the shard's deadline heap (gauge; entries of closed connections are dropped
    /// lazily, bounded by compaction).
    timers,
    /// Compactions of the deadline heap (entries of closed connections dropped at once).
    timer_compactions,
}

impl ShardStats {
    /// Adds `n` to `cell`. Only the owning shard calls this, so load + store is race-free.
    #[inline]
    pub(crate) fn add(cell: &AtomicU64, n: u64) {
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// [`add`](Self::add), published with Release (for a reader that loads this cell with
    /// Acquire before others the owner wrote earlier).
    #[inline]
    pub(crate) fn add_release(cell: &AtomicU64, n: u64) {
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Release,
        );
    }

    /// Sets `cell` to `v` (a counter kept elsewhere on the owning shard).
    #[inline]
    pub(crate) fn set(cell: &AtomicU64, v: u64) {
        cell.store(v, Ordering::Relaxed);
    }

    /// Subtracts `n` from a gauge cell.
    #[inline]
    pub(crate) fn sub(cell: &AtomicU64, n: u64) {
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }
}
