//! Physical limits measured in the same run, on one core (the server core): in-memory TLS 1.3
//! open+seal throughput of 64 KiB writes for every crypto provider compiled in (the limit is
//! the best, not the one in use), and loopback TCP stream throughput with the sender and the
//! receiver on the same core (an echo server's core does both). Both bounded in time.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::sys;
use crate::tlsutil::{self, Provider};

const CHUNK: usize = 64 * 1024;

/// Gb/s of sealing 64 KiB writes on a client connection and opening them on a server
/// connection, in memory, single thread, for `dur`.
pub fn tls_open_seal_gbps(provider: Provider, dur: Duration) -> anyhow::Result<f64> {
    let ss = tlsutil::SelfSigned::generate()?;
    let scfg = tlsutil::server_config(ss.cert_pem.as_bytes(), ss.key_pem.as_bytes(), provider)?;
    let ccfg = tlsutil::client_config(ss.cert_pem.as_bytes(), provider, false)?;
    let mut client = rustls::ClientConnection::new(
        ccfg,
        rustls::pki_types::ServerName::try_from("localhost")?.to_owned(),
    )?;
    let mut server = rustls::ServerConnection::new(scfg)?;
    let mut wire = Vec::with_capacity(CHUNK * 2);
    // Handshake in memory.
    for _ in 0..32 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire)?;
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd)?;
            server.process_new_packets()?;
        }
        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire)?;
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd)?;
            client.process_new_packets()?;
        }
    }
    if client.is_handshaking() || server.is_handshaking() {
        return Err(anyhow!("in-memory handshake did not finish"));
    }
    let plain = vec![0x5au8; CHUNK];
    let mut sink = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < dur {
        for _ in 0..16 {
            client.writer().write_all(&plain)?;
            wire.clear();
            while client.wants_write() {
                client.write_tls(&mut wire)?;
            }
            let mut rd = &wire[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd)?;
                server.process_new_packets()?;
                loop {
                    match server.reader().read(&mut sink) {
                        Ok(0) => break,
                        Ok(n) => bytes += n as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
    }
    Ok(bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

/// Gb/s of the shards' own TLS 1.3 record layer (`ron_shard::tls_record`, the AEAD backend
/// it prefers) for 64 KiB writes: each write copied once into the record slots of a send
/// buffer and sealed in place as four 16 KiB records (what a uring shard does), then opened in
/// place (what the receiving shard does). AES-256-GCM, the suite the library's configs
/// negotiate first. In memory, single thread, for `dur`.
pub fn record_layer_open_seal_gbps(dur: Duration) -> anyhow::Result<f64> {
    use ron_shard::tls_record::{
        AeadAlgorithm, RecordOpener, RecordSealer, HEADER_LEN, MAX_PLAINTEXT, SEAL_OVERHEAD,
    };
    let key = [0x42u8; 32];
    let alg = AeadAlgorithm::Aes256Gcm;
    let mut sealer = RecordSealer::from_key(alg, &key, [9; 12], 0, None)
        .map_err(|e| anyhow!("record sealer: {e}"))?;
    let mut opener = RecordOpener::from_key(alg, &key, [9; 12], 0, None)
        .map_err(|e| anyhow!("record opener: {e}"))?;
    let plain = vec![0x5au8; CHUNK];
    let records = CHUNK.div_ceil(MAX_PLAINTEXT);
    let mut wire = vec![0u8; CHUNK + records * SEAL_OVERHEAD];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < dur {
        for _ in 0..16 {
            let mut at = 0;
            for chunk in plain.chunks(MAX_PLAINTEXT) {
                wire[at + HEADER_LEN..at + HEADER_LEN + chunk.len()].copy_from_slice(chunk);
                at += sealer
                    .seal_in_place(
                        &mut wire[at..],
                        chunk.len(),
                        ron_shard::tls_record::ContentType::ApplicationData,
                    )
                    .map_err(|e| anyhow!("seal: {e}"))?;
            }
            let mut pos = 0;
            while pos < at {
                let op = opener
                    .open_in_place(&mut wire[pos..at])
                    .map_err(|e| anyhow!("open: {e}"))?
                    .ok_or_else(|| anyhow!("open: incomplete record"))?;
                bytes += op.plaintext.len() as u64;
                pos += op.record_len;
            }
        }
    }
    Ok(bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

/// Gb/s of one loopback TCP stream, sender and receiver threads both pinned to `core`.
pub fn loopback_tcp_gbps(core: Option<usize>, dur: Duration) -> anyhow::Result<f64> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let cores: Vec<usize> = core.into_iter().collect();
    let rc = cores.clone();
    let reader = std::thread::spawn(move || -> anyhow::Result<(u64, Duration)> {
        sys::pin_to(&rc)?;
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        let t0 = Instant::now();
        loop {
            match s.read(&mut buf)? {
                0 => break,
                k => n += k as u64,
            }
        }
        Ok((n, t0.elapsed()))
    });
    sys::pin_to(&cores)?;
    let mut s = std::net::TcpStream::connect(addr).context("loopback connect")?;
    let chunk = vec![0xa5u8; CHUNK];
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        for _ in 0..64 {
            s.write_all(&chunk)?;
        }
    }
    drop(s);
    let (n, el) = reader
        .join()
        .map_err(|_| anyhow!("loopback reader panicked"))??;
    Ok(n as f64 * 8.0 / el.as_secs_f64() / 1e9)
}
