//! Plain quinn peers for the QUIC tests (rustls's stock aws-lc-rs provider, not ours): a client
//! endpoint trusting a PEM certificate, and OAP/1 frames on quinn streams.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use ron_transport::rustls;

/// A plain quinn client endpoint on 127.0.0.1 trusting `cert_pem`, offering `alpn`.
pub fn plain_client(cert_pem: &str, alpn: &[u8]) -> quinn::Endpoint {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep
}

/// Writes one length-prefixed frame.
pub async fn write_frame(send: &mut quinn::SendStream, p: &[u8]) {
    send.write_all(&(p.len() as u32).to_be_bytes())
        .await
        .unwrap();
    send.write_all(p).await.unwrap();
}

/// Reads one length-prefixed frame; `None` if the stream ended or failed first.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Option<Bytes> {
    let mut hdr = [0u8; 4];
    recv.read_exact(&mut hdr).await.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(hdr) as usize];
    recv.read_exact(&mut body).await.ok()?;
    Some(body.into())
}
