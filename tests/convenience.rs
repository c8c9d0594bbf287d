//! `connect_tls` / `serve_tls` (spec/INTEROP.md §1.2): a TLS echo by host name through the two
//! one-call entry points, on whichever engine auto-selection picks.

mod util;

use std::time::Duration;

use ron_transport::engine::convenience::{connect_tls, serve_tls};
use ron_transport::{Bytes, Conn, Engine, Listener, PqMode};

use util::tls::TlsFixture;

#[test]
fn connect_tls_reaches_serve_tls_by_name() {
    util::run_multi_thread(async {
        let fx = TlsFixture::new(PqMode::Off);
        let (server, listener) = serve_tls(util::loopback(), fx.server.clone())
            .await
            .expect("serve_tls");
        let port = listener.local_addr().port();
        let serving = server.serve(listener, |mut conn| async move {
            while let Ok(Some(frame)) = conn.recv().await {
                if conn.send(frame).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(serving);
        let (_client, mut conn) = util::within(
            "connect_tls",
            Duration::from_secs(10),
            connect_tls("localhost", port, fx.client.clone()),
        )
        .await
        .expect("connect_tls by name");
        assert_eq!(conn.info().backend.as_str(), "tls");
        conn.send(Bytes::from_static(b"over tls by name"))
            .await
            .unwrap();
        let echoed = conn.recv().await.unwrap().unwrap();
        assert_eq!(echoed.as_ref(), b"over tls by name");
    });
}
