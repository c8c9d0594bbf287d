//! The echo servers the rig measures, as a table of engines. Every server speaks the rig's
//! wire format and echoes every complete frame back whole. `ron-perf serve` runs exactly one
//! of them in its own process (pinned to the server cores) and prints one `READY` line on
//! stdout once it accepts connections; the orchestrator reads that line.
//!
//! - `tokio-framed`: what a user writes by hand instead of this library: tokio +
//!   tokio-util `Framed<_, LengthDelimitedCodec>` (+ tokio-rustls), no project code in the data
//!   path. The baseline of the chart and of `ron-perf check`'s ratios.
//! - `tokio`, `uring`: ron-transport's two engines behind the drop-in adapter traits, served by
//!   the SAME generic consumer code (`adapter::serve_generic`: `Engine::listen` then
//!   `Engine::serve(listener, handler)`, each connection's future echoing `recv` → `send`),
//!   TCP and TLS.
//! - `uring-raw`: the bare `ron-shard` runtime with an admit-all hook and no metrics (TCP); not
//!   ron-transport's engine, only the reference that shows what the engine's policy costs.
//! - `monoio`, `tokio-uring`: plain TCP echo servers on those runtimes (feature `peers`).
//! - `bare-uring`: the smallest honest io_uring echo, the overhead floor (plain TCP).
//! - `quinn`: QUIC by hand with quinn on tokio (peer of the `tokio` row on `quic`): a quinn
//!   endpoint with the same quinn configs as ron-transport's (`ron_transport::quic`), every
//!   stream echoed by the same `Framed` code as `tokio-framed` ([`quinn_peer`]).
//!
//! With `RON_PERF_METRICS=1`, `tokio` and `uring` also expose their Prometheus metrics on a
//! loopback port announced by a `METRICS` line before `READY` ([`scrape`]).

pub mod adapter;
pub mod bare;
pub mod framed;
#[cfg(feature = "peers")]
pub mod peers;
pub mod quinn_peer;
pub mod scrape;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};

/// One server implementation the rig can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EngineId {
    /// tokio + tokio-util `Framed` by hand (peer; the baseline of ratios).
    TokioFramed,
    /// ron-transport's tokio engine through the adapter traits and `Engine::serve`.
    Tokio,
    /// ron-transport's io_uring engine through the adapter traits and `Engine::serve`.
    Uring,
    /// The bare ron-shard runtime, no policy or metrics (reference).
    UringRaw,
    /// monoio echo (peer).
    Monoio,
    /// tokio-uring echo (peer).
    TokioUring,
    /// Minimal io_uring echo (overhead floor).
    BareUring,
    /// quinn echo on tokio (QUIC peer).
    Quinn,
}

/// Transport of a server or load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS 1.3 over TCP.
    Tls,
    /// Plain frames over a Unix-domain stream socket (`uds.path`).
    Uds,
    /// QUIC (TLS 1.3 inside, one bidirectional stream per connection).
    Quic,
}

impl Transport {
    /// `"tcp"` / `"tls"` / `"uds"` / `"quic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Uds => "uds",
            Self::Quic => "quic",
        }
    }

    /// Parses `tcp` / `tls` / `uds` / `quic`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "tls" => Ok(Self::Tls),
            "uds" => Ok(Self::Uds),
            "quic" => Ok(Self::Quic),
            _ => Err(anyhow!("unknown transport {s:?} (tcp|tls|uds|quic)")),
        }
    }

    /// True for the transports with a TLS 1.3 handshake (`tls`, `quic`): the server needs a
    /// certificate and the client a trust config.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Quic)
    }
}

/// What role an engine plays in the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// ron-transport's own engines.
    Engine,
    /// Peers to compare against.
    Peer,
    /// The overhead floor.
    Floor,
}

impl EngineId {
    /// Every engine, in table order.
    pub const ALL: [EngineId; 8] = [
        EngineId::TokioFramed,
        EngineId::Tokio,
        EngineId::Uring,
        EngineId::UringRaw,
        EngineId::Monoio,
        EngineId::TokioUring,
        EngineId::BareUring,
        EngineId::Quinn,
    ];

    /// The CLI / report name.
    pub fn name(self) -> &'static str {
        match self {
            Self::TokioFramed => "tokio-framed",
            Self::Tokio => "tokio",
            Self::Uring => "uring",
            Self::UringRaw => "uring-raw",
            Self::Monoio => "monoio",
            Self::TokioUring => "tokio-uring",
            Self::BareUring => "bare-uring",
            Self::Quinn => "quinn",
        }
    }

    /// Parses a CLI name.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                anyhow!(
                    "unknown engine {s:?} \
                     (tokio-framed|tokio|uring|uring-raw|monoio|tokio-uring|bare-uring|quinn)"
                )
            })
    }

    /// Its role in the comparison.
    pub fn role(self) -> Role {
        match self {
            Self::Tokio | Self::Uring => Role::Engine,
            Self::TokioFramed | Self::Monoio | Self::TokioUring | Self::Quinn => Role::Peer,
            Self::BareUring | Self::UringRaw => Role::Floor,
        }
    }

    /// Whether it speaks `t`.
    pub fn supports(self, t: Transport) -> bool {
        match self {
            // QUIC: ron-transport's two engines and the quinn peer.
            Self::Tokio | Self::Uring => true,
            Self::Quinn => t == Transport::Quic,
            Self::TokioFramed => t != Transport::Quic,
            // uring-raw drives ron-shard directly and listens on TCP only.
            Self::UringRaw | Self::Monoio | Self::TokioUring | Self::BareUring => {
                t == Transport::Tcp
            }
        }
    }

    /// Whether it needs io_uring (skipped when the kernel refuses io_uring).
    pub fn needs_io_uring(self) -> bool {
        !matches!(self, Self::TokioFramed | Self::Tokio | Self::Quinn)
    }

    /// `Ok` if this build can run it over `t`, else why not.
    pub fn available(self, t: Transport) -> Result<(), String> {
        if self.needs_io_uring() {
            io_uring_available()?;
        }
        match self {
            Self::TokioFramed | Self::Tokio | Self::Quinn => Ok(()),
            Self::Uring => adapter::uring_available(t),
            Self::Monoio | Self::TokioUring => {
                if cfg!(feature = "peers") {
                    Ok(())
                } else {
                    Err("built without feature `peers`".to_owned())
                }
            }
            Self::BareUring | Self::UringRaw => Ok(()),
        }
    }
}

/// Whether io_uring works on this host, probed once per process (`ron_shard::probe`, the same
/// probe the library's engine auto-selection uses); `Err` says why not.
pub fn io_uring_available() -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let p = ron_shard::probe();
            match (p.usable, p.failure) {
                (true, _) => Ok(()),
                (false, Some(f)) => Err(format!("io_uring unavailable: {f} ({})", f.reason())),
                (false, None) => Err("io_uring unavailable (probe found it unusable)".to_owned()),
            }
        })
        .clone()
}

/// Arguments of `ron-perf serve`.
#[derive(Debug, Clone)]
pub struct ServeOpts {
    /// Which server.
    pub engine: EngineId,
    /// Which transport.
    pub transport: Transport,
    /// Listen address (port 0 = any).
    pub listen: SocketAddr,
    /// The socket path when the transport is `uds` (its parent directory must be 0700).
    pub uds: Option<PathBuf>,
    /// Certificate chain PEM (TLS).
    pub cert: Option<PathBuf>,
    /// Private key PEM (TLS, mode 0600).
    pub key: Option<PathBuf>,
    /// Threads / shards (default: one per server core, at least 1).
    pub shards: usize,
    /// Cores to pin to.
    pub cores: Vec<usize>,
    /// tokio runtime flavour of the `tokio-framed` server.
    pub flavour: framed::Flavour,
}

/// The line a server prints on stdout when it accepts connections.
pub fn ready_line(addr: SocketAddr, opts: &ServeOpts, cert: Option<&PathBuf>) -> String {
    let mut s = format!(
        "READY addr={addr} engine={} transport={} pid={}",
        opts.engine.name(),
        opts.transport.as_str(),
        std::process::id()
    );
    if let Some(c) = cert {
        s.push_str(&format!(" cert={}", c.display()));
    }
    if let Some(p) = &opts.uds {
        s.push_str(&format!(" path={}", p.display()));
    }
    s
}

/// Parses a [`ready_line`]: `(addr, cert path)`.
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, Option<PathBuf>)> {
    let rest = line.strip_prefix("READY ")?;
    let mut addr = None;
    let mut cert = None;
    for kv in rest.split(' ') {
        if let Some(a) = kv.strip_prefix("addr=") {
            addr = a.parse().ok();
        } else if let Some(c) = kv.strip_prefix("cert=") {
            cert = Some(PathBuf::from(c));
        }
    }
    Some((addr?, cert))
}

/// Binds `n` listeners on the same address with SO_REUSEPORT (the first decides the port).
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(at),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&at.into()).with_context(|| format!("bind {at}"))?;
        s.listen(4096)?;
        let l: std::net::TcpListener = s.into();
        at = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}

/// Runs `ron-perf serve` (never returns on success: the server runs until killed).
pub fn serve(mut opts: ServeOpts) -> anyhow::Result<()> {
    crate::sys::pin_to(&opts.cores).context("pin server cores")?;
    let _ = crate::sys::raise_nofile(1 << 20);
    if opts.shards == 0 {
        opts.shards = opts.cores.len().max(1);
    }
    if let Err(why) = opts.engine.available(opts.transport) {
        bail!("engine {} is not available: {why}", opts.engine.name());
    }
    if !opts.engine.supports(opts.transport) {
        bail!(
            "engine {} does not speak {}",
            opts.engine.name(),
            opts.transport.as_str()
        );
    }
    let mut printed_cert = None;
    if opts.transport.is_tls() && opts.cert.is_none() {
        let dir = std::env::temp_dir().join(format!("ron-perf-{}", std::process::id()));
        let (c, k) = crate::tlsutil::SelfSigned::generate()?.write_to(&dir)?;
        eprintln!("ron-perf serve: self-signed certificate: {}", c.display());
        opts.cert = Some(c.clone());
        opts.key = Some(k);
        printed_cert = Some(c);
    } else if let Some(c) = &opts.cert {
        printed_cert = Some(c.clone());
    }
    let ready = move |addr: SocketAddr, o: &ServeOpts| {
        use std::io::Write;
        let line = ready_line(addr, o, printed_cert.as_ref());
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    dispatch(&opts, &ready)
}

/// Runs the server of `opts.engine` on the calling thread; `ready` is called once it accepts.
fn dispatch(opts: &ServeOpts, ready: &dyn Fn(SocketAddr, &ServeOpts)) -> anyhow::Result<()> {
    match opts.engine {
        EngineId::TokioFramed => framed::serve(opts, ready),
        EngineId::Tokio => adapter::serve_tokio(opts, ready),
        EngineId::Uring => adapter::serve_uring(opts, ready),
        EngineId::UringRaw => adapter::serve_uring_raw(opts, ready),
        EngineId::Quinn => quinn_peer::serve(opts, ready),
        #[cfg(feature = "peers")]
        EngineId::Monoio => peers::serve_monoio(opts, ready),
        #[cfg(feature = "peers")]
        EngineId::TokioUring => peers::serve_tokio_uring(opts, ready),
        #[cfg(not(feature = "peers"))]
        EngineId::Monoio | EngineId::TokioUring => bail!("built without feature `peers`"),
        EngineId::BareUring => {
            let ls = bind_reuseport(opts.listen, opts.shards)?;
            let addr = ls[0].local_addr()?;
            let mut hs = Vec::new();
            for l in ls {
                hs.push(std::thread::spawn(move || bare::serve(l)));
            }
            ready(addr, opts);
            for h in hs {
                h.join()
                    .map_err(|_| anyhow!("bare-uring shard panicked"))??;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
/// Starts `engine` over `t` on a background thread of this process (tests and tools that
/// need no separate process); returns the bound address once it accepts.
pub fn spawn_in_thread(
    engine: EngineId,
    t: Transport,
    cert: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<SocketAddr> {
    engine.available(t).map_err(|e| anyhow!(e))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let opts = ServeOpts {
        engine,
        transport: t,
        listen: "127.0.0.1:0".parse().expect("static addr"),
        uds: None,
        cert: cert.as_ref().map(|c| c.0.clone()),
        key: cert.map(|c| c.1),
        shards: 1,
        cores: vec![],
        flavour: framed::Flavour::default(),
    };
    std::thread::spawn(move || {
        let tx2 = tx.clone();
        let ready = move |a: SocketAddr, _: &ServeOpts| {
            let _ = tx2.send(Ok(a));
        };
        let r = dispatch(&opts, &ready);
        if let Err(e) = r {
            let _ = tx.send(Err(e));
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .map_err(|_| anyhow!("{} did not start", engine.name()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Frames of awkward sizes (empty, tiny, above every initial buffer, several hundred KiB)
    /// written back to back must come back byte for byte, in order.
    fn exact_echo(addr: SocketAddr) {
        let sizes = [0usize, 1, 1000, 16 * 1024 + 3, 70_000, 300_000, 5];
        let mut out = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            out.extend_from_slice(&(n as u32).to_be_bytes());
            out.extend((0..n).map(|j| ((i * 31 + j) % 253) as u8));
        }
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut w = s.try_clone().unwrap();
        let expect = out.clone();
        let writer = std::thread::spawn(move || w.write_all(&out).unwrap());
        let mut back = vec![0u8; expect.len()];
        s.read_exact(&mut back).unwrap();
        writer.join().unwrap();
        assert!(back == expect, "echo differs");
    }

    #[test]
    fn every_tcp_engine_echoes_frames_whole_and_in_order() {
        let mut ran = 0;
        for e in EngineId::ALL {
            if !e.supports(Transport::Tcp) || e.available(Transport::Tcp).is_err() {
                continue;
            }
            let addr = spawn_in_thread(e, Transport::Tcp, None).unwrap();
            exact_echo(addr);
            ran += 1;
        }
        // tokio-framed and tokio always; with io_uring also uring, uring-raw,
        // bare-uring and the two peers of the default features.
        let want = if io_uring_available().is_ok() { 6 } else { 2 };
        assert!(ran >= want, "only {ran} engines ran");
    }

    #[test]
    fn load_client_measures_against_bare_uring_and_tokio_tls() {
        let addr = spawn_in_thread(EngineId::BareUring, Transport::Tcp, None).unwrap();
        let spec = crate::client::LoadSpec {
            target: addr,
            uds: None,
            tls: None,
            conns: 4,
            payload: 512,
            depth: 2,
            rate: None,
            warmup: std::time::Duration::from_millis(50),
            duration: std::time::Duration::from_millis(300),
            cores: vec![],
            server_pid: Some(std::process::id()),
            server_cores: vec![],
            sources: Vec::new(),
            quic: false,
        };
        let r = crate::client::run_load(&spec).unwrap();
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        assert!(r.frames > 0 && !r.hist.is_empty());
        assert!(r.server_cpu.is_some());

        let dir = tempfile::tempdir().unwrap();
        let ss = crate::tlsutil::SelfSigned::generate().unwrap();
        let (c, k) = ss.write_to(dir.path()).unwrap();
        let addr = spawn_in_thread(EngineId::Tokio, Transport::Tls, Some((c, k))).unwrap();
        let tls = crate::tlsutil::library_client_config(ss.cert_pem.as_bytes(), true).unwrap();
        let r = crate::client::run_load(&crate::client::LoadSpec {
            target: addr,
            tls: Some(tls.clone()),
            ..spec
        })
        .unwrap();
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        assert!(r.frames > 0);
        let h = crate::client::run_handshakes(
            addr,
            tls,
            false,
            2,
            std::time::Duration::from_millis(50),
            std::time::Duration::from_millis(300),
            &[],
            None,
            &[],
        )
        .unwrap();
        assert_eq!(h.errors, 0, "{:?}", h.first_error);
        assert!(h.handshakes > 0);
    }

    /// Three connections echoing 70 KB frames (two in flight) for 300 ms, over TLS or QUIC.
    fn echo_70k(
        addr: std::net::SocketAddr,
        tls: &std::sync::Arc<rustls::ClientConfig>,
        quic: bool,
    ) -> crate::client::LoadSpec {
        crate::client::LoadSpec {
            target: addr,
            uds: None,
            tls: Some(tls.clone()),
            conns: 3,
            payload: 70_000,
            depth: 2,
            rate: None,
            warmup: std::time::Duration::from_millis(50),
            duration: std::time::Duration::from_millis(300),
            cores: vec![],
            server_pid: None,
            server_cores: vec![],
            sources: Vec::new(),
            quic,
        }
    }

    #[test]
    fn tokio_framed_and_generic_engines_echo_over_tls() {
        let dir = tempfile::tempdir().unwrap();
        let ss = crate::tlsutil::SelfSigned::generate().unwrap();
        let (c, k) = ss.write_to(dir.path()).unwrap();
        let tls = crate::tlsutil::library_client_config(ss.cert_pem.as_bytes(), true).unwrap();
        for e in [EngineId::TokioFramed, EngineId::Tokio, EngineId::Uring] {
            if e.available(Transport::Tls).is_err() {
                continue;
            }
            let addr = spawn_in_thread(e, Transport::Tls, Some((c.clone(), k.clone()))).unwrap();
            let r = crate::client::run_load(&echo_70k(addr, &tls, false)).unwrap();
            assert_eq!(r.errors, 0, "{}: {:?}", e.name(), r.first_error);
            assert!(r.frames > 0, "{}", e.name());
        }
    }

    /// `--transports quic`: ron-transport's tokio engine and the quinn peer, driven by the same
    /// load client (quinn, one stream per connection, the OAP/1 preface), 70 KB frames.
    #[test]
    fn tokio_engine_and_quinn_peer_echo_over_quic() {
        let dir = tempfile::tempdir().unwrap();
        let ss = crate::tlsutil::SelfSigned::generate().unwrap();
        let (c, k) = ss.write_to(dir.path()).unwrap();
        let tls = crate::tlsutil::library_client_config(ss.cert_pem.as_bytes(), true).unwrap();
        let quic: Vec<_> = EngineId::ALL
            .into_iter()
            .filter(|e| e.supports(Transport::Quic) && e.available(Transport::Quic).is_ok())
            .collect();
        assert_eq!(quic, [EngineId::Tokio, EngineId::Uring, EngineId::Quinn]);
        for e in quic {
            let addr = spawn_in_thread(e, Transport::Quic, Some((c.clone(), k.clone()))).unwrap();
            let r = crate::client::run_load(&echo_70k(addr, &tls, true)).unwrap();
            assert_eq!(r.errors, 0, "{}: {:?}", e.name(), r.first_error);
            assert!(r.frames > 0, "{}", e.name());
            let h = crate::client::run_handshakes(
                addr,
                tls.clone(),
                true,
                2,
                std::time::Duration::from_millis(50),
                std::time::Duration::from_millis(300),
                &[],
                None,
                &[],
            )
            .unwrap();
            assert_eq!(h.errors, 0, "{}: {:?}", e.name(), h.first_error);
            assert!(h.handshakes > 0, "{}", e.name());
        }
    }

    #[test]
    fn environment_wins_over_the_bench_defaults() {
        let o = ServeOpts {
            uds: None,
            engine: EngineId::Tokio,
            transport: Transport::Tcp,
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: None,
            key: None,
            shards: 1,
            cores: vec![],
            flavour: framed::Flavour::default(),
        };
        let c = adapter::serve_config_from(&o, Vec::<(String, String)>::new()).unwrap();
        assert_eq!(c.max_conns, 1_000_000);
        assert_eq!(c.idle_timeout, std::time::Duration::from_secs(3600));
        let c = adapter::serve_config_from(
            &o,
            [
                ("RON_TRANSPORT_IDLE_TIMEOUT", "5s"),
                ("RON_TRANSPORT_MAX_CONNS", "10"),
                ("HOME", "/nowhere"),
            ],
        )
        .unwrap();
        assert_eq!(c.max_conns, 10);
        assert_eq!(c.idle_timeout, std::time::Duration::from_secs(5));
        assert_eq!(c.read_timeout, std::time::Duration::from_secs(60));
        let line = adapter::describe_config(&c);
        assert!(
            line.contains("max_conns=10") && line.contains("idle_timeout=5s"),
            "{line}"
        );
    }

    #[test]
    fn ready_line_roundtrip() {
        let o = ServeOpts {
            uds: None,
            engine: EngineId::BareUring,
            transport: Transport::Tcp,
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: None,
            key: None,
            shards: 1,
            cores: vec![],
            flavour: framed::Flavour::default(),
        };
        let a: SocketAddr = "127.0.0.1:4567".parse().unwrap();
        let l = ready_line(a, &o, Some(&PathBuf::from("/tmp/x/cert.pem")));
        assert_eq!(
            parse_ready_line(&l),
            Some((a, Some(PathBuf::from("/tmp/x/cert.pem"))))
        );
        assert_eq!(parse_ready_line("hello"), None);
    }

    #[test]
    fn engine_names_roundtrip_and_roles() {
        for e in EngineId::ALL {
            assert_eq!(EngineId::parse(e.name()).unwrap(), e);
        }
        assert!(EngineId::parse("nginx").is_err());
        assert_eq!(EngineId::BareUring.role(), Role::Floor);
        assert!(!EngineId::Monoio.supports(Transport::Tls));
        assert!(EngineId::Tokio.supports(Transport::Tls));
        assert!(EngineId::TokioFramed.supports(Transport::Tls));
        assert_eq!(EngineId::TokioFramed.role(), Role::Peer);
        assert_eq!(EngineId::Uring.role(), Role::Engine);
        assert!(EngineId::ALL
            .iter()
            .filter(|e| e.needs_io_uring())
            .all(|e| !matches!(e, EngineId::Tokio | EngineId::TokioFramed)));
    }
}
