//! Test support for consumers and for ron-transport's own tests (feature `test-util`, off by
//! default; `--all-features` includes it). It owns [`FaultRelay`], a seeded, loopback-only TCP
//! relay that injects connection faults (resets, stalls, refused connects, half-closes) between
//! a client and a server, so code built on the adapter traits can be driven under faults and
//! checked for stable reasons, no leaks and prompt cancellation (spec/IDB G-10,
//! spec/CONCURRENCY §10, spec/SECURITY §7).
//!
//! It does not decide what the engines should do about a fault: it only injects faults
//! deterministically (the fault of the n-th relayed connection is a function of the seed and
//! n) and counts what it planned and what it actually did.
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use ron_transport::testing::{FaultPlan, FaultRelay};
//!
//! let relay = FaultRelay::start(server, FaultPlan::mixed(), 42).await?;
//! // Dial `relay.local_addr()` instead of `server` ...
//! let counts = relay.counts();
//! println!("reset {} of {} connections", counts.injected.reset, counts.accepted);
//! relay.stop().await; // resets every pair still open
//! # Ok(()) }
//! ```

mod relay;

pub use relay::{Direction, Fault, FaultCounts, FaultPlan, FaultRelay, FaultTally};
