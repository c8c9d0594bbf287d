//! Shard-local serving on the uring engine: a [`LocalHandler`] runs on the connection's owning
//! shard (no cross-thread hop, no channel, no task) and can echo a frame straight out of the
//! receive buffer ([`LocalCtx::send_frame`]). It is a thin layer over `ron-shard`'s
//! [`ConnHandler`] / [`ConnCtx`] that adds ron-transport's policy, exactly as the uring engine's
//! handle path does:
//!
//! - admission: [`Policy::admit`] in the runtime's admit hook, on the accepting shard, before
//!   any buffer or read (connection caps, per-peer caps; `Policy::admit` counts
//!   `rejected_total{reason}`);
//! - frame ceiling: `max_frame_bytes` is enforced by the shard's decoder before allocating
//!   (close reason `Frame` → `rejected_total{reason="too_large"}`); a lower live value (config
//!   reload) is enforced per frame and on send;
//! - timeouts: read/write/idle deadlines from the live config, set at open and re-applied
//!   when the config generation changes; a timeout close counts `rejected_total{reason="timeout"}`;
//! - rates: ingress and egress bytes are accounted in the per-connection, per-peer and global
//!   token buckets; when a bucket asks for a wait, the connection stops reading for that long
//!   (a shard-local handler has no writer to stall, so pacing is applied to its input);
//! - metrics (with the `backend` label, through pre-resolved [`BackendMetrics`] handles):
//!   `transport_accepts_total`, `conn_inflight`, `handshake_latency_seconds` (accept → open),
//!   `bytes_in_total` / `bytes_out_total` (wire bytes, prefix included),
//!   `io_read_size_bytes` / `io_write_size_bytes` (per frame), `tasks_spawned_total` (the
//!   handler plays the reader and the writer role of a connection) and
//!   `tasks_aborted_total` at shutdown.
//!
//! TLS (`backend = "tls"`, server config from [`EngineSetup`](crate::engine::setup::EngineSetup)):
//! the owning shard runs the handshake (bounded by `read_timeout`) and the record layer with
//! its TLS pump; the factory runs once the handshake completed (`ConnInfo` carries `pq`,
//! `alpn`, `resumed`), `handshake_latency_seconds{backend="tls",pq}` and
//! `pq_handshake_total{result="ok"}` are observed then; a failed handshake counts
//! `tls_handshake_failures_total`, `rejected_total{reason="tls"}` and
//! `pq_handshake_total{result="fail"}` (a stalled one `rejected_total{reason="timeout"}`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ron_shard::{
    AcceptHooks, AdmitToken, CloseReason, ConnCtx, ConnHandler, ConnMeta, ConnOptions, ConnRemote,
    CtxSendError, Reject, Runtime, RuntimeConfig,
};

pub use ron_shard::Frame;

use super::{admit_counted, count_handshake_failure, map_close, timeouts_of};
use crate::config::{Backend, ValidConfig};
use crate::engine::shared::EngineShared;
use crate::engine::{ConnInfo, EngineKind, ShutdownReport};
use crate::error::{RejectReason, TransportError};
use crate::metrics::{BackendMetrics, PqLabel, TaskKind};
use crate::policy::{now_ns, ConnPermit};
use crate::readiness::ReadyState;

/// Wake bit reserved for resuming reads after a rate-limit pause.
const RATE_WAKE: u32 = 1 << 31;

/// A connection handler running on its owning shard. Callbacks must not block.
///
/// Order: `on_open`, then any number of `on_frame` / `on_writable`, then exactly one
/// `on_close`.
pub trait LocalHandler: 'static {
    /// The connection is established (before any byte is read).
    fn on_open(&mut self, ctx: &mut LocalCtx<'_, '_>) {
        let _ = ctx;
    }

    /// A complete frame arrived (already checked against the frame ceiling and counted).
    fn on_frame(&mut self, ctx: &mut LocalCtx<'_, '_>, frame: Frame<'_>);

    /// Queued output fell below the shard's low-water mark (for handlers that throttle
    /// themselves on [`LocalCtx::queued_bytes`]).
    fn on_writable(&mut self, ctx: &mut LocalCtx<'_, '_>) {
        let _ = ctx;
    }

    /// The server is shutting down: finish up before the drain deadline (after which the
    /// connection is aborted). The default closes gracefully (queued output is flushed).
    fn on_drain(&mut self, ctx: &mut LocalCtx<'_, '_>) {
        ctx.close();
    }

    /// The connection is gone: `Ok` for a clean close (peer or local), else the contract error
    /// (`Timeout`, `TooLarge`, `Cancelled` for an abort, `Io`, ...).
    fn on_close(&mut self, outcome: Result<(), TransportError>);
}

/// The handler's view of its connection during a callback.
pub struct LocalCtx<'a, 'b> {
    ctx: &'a mut ConnCtx<'b>,
    st: &'a mut ConnStateLocal,
}

impl std::fmt::Debug for LocalCtx<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCtx")
            .field("info", &self.st.info)
            .finish()
    }
}

impl LocalCtx<'_, '_> {
    /// What is known about this connection.
    pub fn info(&self) -> &ConnInfo {
        &self.st.info
    }

    /// The shard's current time (taken once per loop iteration).
    pub fn now(&self) -> Instant {
        self.ctx.now()
    }

    /// Bytes queued on this connection and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.ctx.queued_bytes()
    }

    /// Queues `frame` back without copying (an in-place frame keeps its receive buffer until
    /// the write completes). Fails with `TooLarge` above the live frame ceiling (counted),
    /// `IoClosed` once the connection is closing.
    pub fn send_frame(&mut self, frame: &Frame<'_>) -> Result<(), TransportError> {
        let n = self.st.check_out(frame.len())?;
        let r = self.ctx.send_frame(frame);
        self.st.sent(self.ctx, n, r)
    }

    /// Queues a frame whose payload is `payload` (no copy). Errors as
    /// [`send_frame`](Self::send_frame).
    pub fn send(&mut self, payload: Bytes) -> Result<(), TransportError> {
        let n = self.st.check_out(payload.len())?;
        let r = self.ctx.send_bytes(payload);
        self.st.sent(self.ctx, n, r)
    }

    /// Stops reading from the socket (backpressure) until [`resume_reading`](Self::resume_reading).
    pub fn pause_reading(&mut self) {
        self.st.user_paused = true;
        self.ctx.pause_reading();
    }

    /// Resumes reading (unless a rate limit still holds the connection).
    pub fn resume_reading(&mut self) {
        self.st.user_paused = false;
        if !self.st.rate_paused {
            self.ctx.resume_reading();
        }
    }

    /// Graceful close: flush queued output (bounded by the write timeout), then close.
    pub fn close(&mut self) {
        self.ctx.close();
    }

    /// Hard close: queued output is dropped.
    pub fn abort(&mut self) {
        self.ctx.abort();
    }
}

/// Admission proof: the policy permit and the in-flight gauge, released with the connection.
struct LocalAdmitted {
    permit: ConnPermit,
    inflight: prometheus::IntGauge,
    started: Instant,
}

impl Drop for LocalAdmitted {
    fn drop(&mut self) {
        self.inflight.dec();
    }
}

/// Per-connection policy state, owned by the shard-side wrapper.
struct ConnStateLocal {
    info: ConnInfo,
    shared: Arc<EngineShared>,
    bm: BackendMetrics,
    admitted: LocalAdmitted,
    /// Config generation the cached limits were read at.
    generation: u64,
    max_frame: u64,
    /// Any rate limit configured (else the buckets are not consulted at all).
    rates_on: bool,
    /// The bucket clock ([`now_ns`]) at `clock_base`: bucket time is derived from the shard's
    /// loop clock, so the hot path reads no clock of its own.
    clock_ns: u64,
    clock_base: Instant,
    user_paused: bool,
    rate_paused: bool,
    /// The contract error of a close this layer decided (e.g. a live-ceiling abort).
    failed: Option<TransportError>,
}

impl ConnStateLocal {
    /// Re-reads limits and deadlines if the config was swapped since they were cached.
    fn refresh(&mut self, ctx: &mut ConnCtx<'_>) {
        let g = self.shared.policy.config_handle().generation();
        if g != self.generation {
            self.generation = g;
            let cfg = self.shared.config();
            self.max_frame = cfg.max_frame_bytes;
            self.rates_on = rates_on(&cfg);
            ctx.set_timeouts(timeouts_of(&cfg));
        }
    }

    /// Bucket-clock time of the shard's `now`.
    fn bucket_now(&self, now: Instant) -> u64 {
        let d = now.saturating_duration_since(self.clock_base);
        self.clock_ns
            .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Accounts `wire` bytes in the ingress (`ingress`) or egress buckets and holds reading
    /// for as long as they ask.
    fn account(&mut self, ctx: &mut ConnCtx<'_>, wire: u64, ingress: bool) {
        if !self.rates_on {
            return;
        }
        let now = self.bucket_now(ctx.now());
        let p = &self.admitted.permit;
        let wait = if ingress {
            p.pace_ingress(wire, now)
        } else {
            p.pace_egress(wire, now)
        };
        if !wait.is_zero() {
            self.rate_paused = true;
            ctx.pause_reading();
            ctx.wake_after(wait, RATE_WAKE);
        }
    }

    fn check_out(&self, len: usize) -> Result<u64, TransportError> {
        let n = len as u64;
        if n > self.max_frame {
            self.shared.metrics.reject(RejectReason::TooLarge);
            return Err(TransportError::TooLarge {
                len: n,
                max: self.max_frame,
            });
        }
        Ok(n + 4)
    }

    fn sent(
        &mut self,
        ctx: &mut ConnCtx<'_>,
        wire: u64,
        r: Result<(), CtxSendError>,
    ) -> Result<(), TransportError> {
        match r {
            Ok(()) => {
                self.bm.bytes_out.inc_by(wire);
                self.bm.io_write_size.observe(wire as f64);
                self.account(ctx, wire, false);
                Ok(())
            }
            Err(CtxSendError::TooLarge) => {
                self.shared.metrics.reject(RejectReason::TooLarge);
                Err(TransportError::TooLarge {
                    len: wire - 4,
                    max: self.max_frame,
                })
            }
            Err(_) => Err(TransportError::IoClosed),
        }
    }
}

/// The shard-side wrapper: policy and metrics around the caller's handler.
struct Local<H> {
    handler: H,
    st: ConnStateLocal,
}

impl<H: LocalHandler> ConnHandler for Local<H> {
    fn on_open(&mut self, ctx: &mut ConnCtx<'_>) {
        ctx.set_timeouts(timeouts_of(&self.st.shared.config()));
        self.handler.on_open(&mut LocalCtx {
            ctx,
            st: &mut self.st,
        });
    }

    fn on_frame(&mut self, ctx: &mut ConnCtx<'_>, frame: Frame<'_>) {
        let wire = frame.len() as u64 + 4;
        self.st.bm.bytes_in.inc_by(wire);
        self.st.bm.io_read_size.observe(wire as f64);
        self.st.refresh(ctx);
        if frame.len() as u64 > self.st.max_frame {
            self.st.shared.metrics.reject(RejectReason::TooLarge);
            self.st.failed = Some(TransportError::TooLarge {
                len: frame.len() as u64,
                max: self.st.max_frame,
            });
            ctx.abort();
            return;
        }
        self.st.account(ctx, wire, true);
        self.handler.on_frame(
            &mut LocalCtx {
                ctx,
                st: &mut self.st,
            },
            frame,
        );
    }

    fn on_writable(&mut self, ctx: &mut ConnCtx<'_>) {
        self.handler.on_writable(&mut LocalCtx {
            ctx,
            st: &mut self.st,
        });
    }

    fn on_drain(&mut self, ctx: &mut ConnCtx<'_>) {
        self.handler.on_drain(&mut LocalCtx {
            ctx,
            st: &mut self.st,
        });
    }

    fn on_wake(&mut self, ctx: &mut ConnCtx<'_>, bits: u32) {
        if bits & RATE_WAKE != 0 {
            self.st.rate_paused = false;
            if !self.st.user_paused {
                ctx.resume_reading();
            }
        }
    }

    fn on_close(&mut self, reason: &CloseReason) {
        let m = &self.st.shared.metrics;
        match reason {
            CloseReason::Timeout(_) => m.reject(RejectReason::Timeout),
            CloseReason::Frame(_) => m.reject(RejectReason::TooLarge),
            CloseReason::Shutdown => m
                .tasks_aborted
                .with_label_values(&[TaskKind::Writer.as_str()])
                .inc(),
            _ => {}
        }
        let outcome = match self.st.failed.take() {
            Some(e) => Err(e),
            None => map_close(reason).map_or(Ok(()), Err),
        };
        self.handler.on_close(outcome);
    }
}

struct LocalAccept<F> {
    shared: Arc<EngineShared>,
    bm: BackendMetrics,
    factory: F,
}

impl<H, F> AcceptHooks for LocalAccept<F>
where
    H: LocalHandler,
    F: Fn(&ConnInfo) -> H + Send + Sync + 'static,
{
    fn admit(&self, peer: SocketAddr) -> Result<AdmitToken, Reject> {
        let permit = admit_counted(&self.shared.policy, &self.bm, peer)?;
        Ok(AdmitToken::new(LocalAdmitted {
            permit,
            inflight: self.bm.conn_inflight.clone(),
            started: Instant::now(),
        }))
    }

    fn handshake_failed(
        &self,
        token: AdmitToken,
        _meta: &ConnMeta,
        failure: &ron_shard::HandshakeFailure,
    ) {
        // Dropping the token releases the permit and the in-flight gauge.
        drop(token);
        count_handshake_failure(
            &self.shared.metrics,
            &self.bm,
            self.shared.pq_mode,
            &failure.reason,
        );
    }

    fn open(
        &self,
        token: AdmitToken,
        meta: &ConnMeta,
        _remote: ConnRemote,
    ) -> Box<dyn ConnHandler> {
        let Ok(admitted) = token.downcast::<LocalAdmitted>() else {
            return Box::new(ron_shard::Refuse);
        };
        // TLS: accept → handshake completion (the shard opens the handler only then).
        // Plain TCP: establishment (accept → open on the owning shard) is the "handshake".
        let pq = match &meta.tls {
            Some(t) if t.hybrid_pq => PqLabel::Hybrid,
            _ => PqLabel::Off,
        };
        self.bm
            .handshake(pq)
            .observe(admitted.started.elapsed().as_secs_f64());
        if meta.tls.is_some() {
            self.shared
                .metrics
                .pq_handshake_result(Backend::Tls, pq, true);
        }
        for kind in [TaskKind::Reader, TaskKind::Writer] {
            self.shared
                .metrics
                .tasks_spawned
                .with_label_values(&[kind.as_str()])
                .inc();
        }
        let info = ConnInfo {
            conn_id: meta.id,
            peer_addr: meta.peer,
            local_addr: meta.local,
            backend: self.shared.backend,
            engine: EngineKind::Uring,
            alpn: meta.tls.as_ref().and_then(|t| t.alpn.clone()),
            pq,
            resumed: meta.tls.as_ref().is_some_and(|t| t.resumed),
        };
        let handler = (self.factory)(&info);
        let generation = self.shared.policy.config_handle().generation();
        let cfg = self.shared.config();
        let clock_base = Instant::now();
        Box::new(Local {
            handler,
            st: ConnStateLocal {
                info,
                shared: self.shared.clone(),
                bm: self.bm.clone(),
                admitted,
                generation,
                max_frame: cfg.max_frame_bytes,
                rates_on: rates_on(&cfg),
                clock_ns: now_ns(),
                clock_base,
                user_paused: false,
                rate_paused: false,
                failed: None,
            },
        })
    }
}

/// True if any byte-rate limit is configured (the policy's buckets are then consulted).
pub(crate) fn rates_on(cfg: &ValidConfig) -> bool {
    cfg.per_conn_bytes_per_sec
        | cfg.per_peer_bytes_per_sec
        | cfg.global_ingress_bytes_per_sec
        | cfg.global_egress_bytes_per_sec
        != 0
}

fn conn_options(cfg: &ValidConfig) -> ConnOptions {
    ConnOptions {
        max_frame: u32::try_from(cfg.max_frame_bytes).unwrap_or(u32::MAX),
        timeouts: timeouts_of(cfg),
        nodelay: true,
    }
}

/// A listener served by shard-local handlers on its own shard runtime.
pub struct LocalServer {
    rt: Runtime,
    shared: Arc<EngineShared>,
    local: SocketAddr,
    listener: ron_shard::ListenerId,
}

impl std::fmt::Debug for LocalServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalServer")
            .field("local", &self.local)
            .field("shards", &self.rt.shard_count())
            .finish()
    }
}

/// Starts a shard runtime (`runtime` knobs; `chunk_bytes` from the config) and serves `addr`
/// with one `factory(&info)` handler per admitted connection, on the connection's shard,
/// under `shared`'s policy, live config and metrics (see the module docs).
///
/// Fails with `Unsupported` for a TLS backend without a server config or when io_uring cannot
/// start, and with `Io`
/// when `addr` cannot be bound.
pub fn serve_local<H, F>(
    shared: Arc<EngineShared>,
    runtime: RuntimeConfig,
    addr: SocketAddr,
    factory: F,
) -> Result<LocalServer, TransportError>
where
    H: LocalHandler,
    F: Fn(&ConnInfo) -> H + Send + Sync + 'static,
{
    let cfg = shared.config();
    let tls = super::listener_tls(shared.backend == Backend::Tls, shared.tls_server.as_ref())?;
    let chunk = usize::try_from(cfg.chunk_bytes).unwrap_or(64 * 1024);
    let rt = Runtime::start(RuntimeConfig {
        chunk_bytes: chunk.max(1),
        ..runtime
    })
    .map_err(|e| TransportError::Unsupported {
        what: format!("uring engine: {e}"),
    })?;
    let l = ron_shard::bind(addr)?;
    let local = l.local_addr()?;
    let bm = shared.metrics.backend(shared.backend).clone();
    let hooks = Arc::new(LocalAccept {
        shared: shared.clone(),
        bm,
        factory,
    });
    let listened = match tls {
        Some(c) => rt.listen_tls(l, conn_options(&cfg), c, hooks),
        None => rt.listen(l, conn_options(&cfg), hooks),
    };
    let listener = listened.map_err(|e| TransportError::Unsupported {
        what: format!("uring listener: {e}"),
    })?;
    shared.readiness.set(ReadyState::Ready);
    Ok(LocalServer {
        rt,
        shared,
        local,
        listener,
    })
}

impl LocalServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Number of shards serving.
    pub fn shard_count(&self) -> usize {
        self.rt.shard_count()
    }

    /// Per-shard runtime counters (accepted, open, rejected, bytes, ...).
    pub fn stats(&self) -> Vec<ron_shard::StatsSnapshot> {
        self.rt.stats()
    }

    /// The shared engine state (policy, metrics, readiness).
    pub fn shared(&self) -> &Arc<EngineShared> {
        &self.shared
    }

    /// Stops accepting; already admitted connections keep running.
    pub fn stop_accepting(&self) {
        let _ = self.rt.stop_listening(self.listener);
    }

    /// Stops accepting, asks every connection to drain for up to `deadline`, aborts the rest
    /// (counted in `tasks_aborted_total{kind="reader"}`) and waits for the shards to exit.
    /// Blocks the calling thread; readiness turns `NotReady{shutdown}` first.
    pub fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.shared
            .readiness
            .set(ReadyState::NotReady { reason: "shutdown" });
        let r = self.rt.shutdown(deadline).wait();
        if r.aborted > 0 {
            self.shared
                .metrics
                .tasks_aborted
                .with_label_values(&[TaskKind::Reader.as_str()])
                .inc_by(r.aborted);
        }
        ShutdownReport {
            drained: r.drained,
            aborted: r.aborted,
        }
    }
}
