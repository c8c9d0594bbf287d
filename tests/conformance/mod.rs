//! The engine conformance suite (spec/IDB P-4, P-6): one set of cases every engine must pass
//! unchanged — same limits, timeouts, metrics and reason strings.
//!
//! An engine's test file implements [`EngineUnderTest`] and invokes [`conformance_suite!`]:
//!
//! ```ignore
//! mod util;
//! #[macro_use]
//! mod conformance;
//!
//! struct UringUnderTest;
//! impl conformance::EngineUnderTest for UringUnderTest { /* build, live_tasks */ }
//! conformance_suite!(UringUnderTest);
//! ```
//!
//! which generates one `#[test]` per case per tokio scheduler (`current_thread` and
//! `multi_thread`). Cases talk to the engine only through the adapter traits, plus raw loopback
//! sockets where a misbehaving peer is needed.

#![allow(dead_code)]

pub mod cases;

use std::sync::Arc;

use ron_transport::{ConfigHandle, Engine, TransportMetrics, ValidConfig};

pub use crate::util::tls::TlsFixture;

/// How the suite builds the engine under test.
pub trait EngineUnderTest: 'static {
    /// The engine type.
    type E: Engine;

    /// Builds an engine from `cfg` (its backend decides TCP or TLS), counting into `metrics`.
    /// For TLS, `tls` carries the server and client configs to use instead of files.
    fn build(cfg: ValidConfig, tls: Option<TlsFixture>, metrics: Arc<TransportMetrics>) -> Self::E;

    /// Builds an engine over a live config `handle` (reload cases reload through it).
    fn build_with_handle(
        handle: ConfigHandle,
        tls: Option<TlsFixture>,
        metrics: Arc<TransportMetrics>,
    ) -> Self::E;

    /// Per-connection tasks (readers, writers, handshakes) the engine still runs.
    fn live_tasks(engine: &Self::E) -> usize;

    /// Whether the engine's listeners are reachable by kernel sockets. Cases that use a raw
    /// `TcpStream` as the misbehaving peer print `SKIPPED <case>: <reason>` and return when
    /// it is false (the memory engine: its own test file has an in-process `pipe_*` twin).
    fn real_sockets() -> bool {
        true
    }
}

/// True (after printing `SKIPPED <case>: <reason>`) if `case` needs kernel sockets the
/// engine under test does not have.
pub fn skip_without_sockets<T: EngineUnderTest>(case: &str, why: &str) -> bool {
    if T::real_sockets() {
        return false;
    }
    println!("SKIPPED {case}: {why}");
    true
}

/// Generates every conformance case for `$eut` on both tokio schedulers.
#[macro_export]
macro_rules! conformance_suite {
    ($eut:ty) => {
        $crate::conformance_suite!(@sched $eut, current_thread, run_current_thread);
        $crate::conformance_suite!(@sched $eut, multi_thread, run_multi_thread);
    };
    (@sched $eut:ty, $module:ident, $runner:ident) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_suite!(@cases $eut, $runner;
                echo_tcp,
                echo_tls,
                frame_ceiling,
                read_timeout,
                write_timeout,
                idle_timeout,
                dial_timeout,
                max_conns_tcp,
                max_conns_tls,
                per_peer_cap,
                egress_rate,
                tls_wrong_ca,
                tls_handshake_timeout,
                pq_hybrid,
                busy_when_inbox_full,
                cancel_quiesces,
                graceful_close_tcp,
                graceful_close_tls,
                metrics_smoke,
                shutdown_drains_and_aborts,
                dial_cap_global,
                dial_cap_per_peer,
                dial_pacing,
                dial_refused,
                dial_by_name,
                reload_reaches_dialed,
            );
        }
    };
    (@cases $eut:ty, $runner:ident; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::util::$runner($crate::conformance::cases::$case::<$eut>());
            }
        )*
    };
}
