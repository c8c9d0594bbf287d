//! Where a connection goes and where a listener binds: [`DialTarget`] (an address, a host name
//! and port, or a Unix socket path) and [`ListenTarget`] (an address or a Unix socket path).
//!
//! [`Engine::dial`](crate::engine::Engine::dial) and
//! [`Engine::listen`](crate::engine::Engine::listen) take `impl Into<…>` of these, so callers that
//! hold a [`SocketAddr`] keep writing `engine.dial(addr, opts)`; a host name is
//! `engine.dial(("example.net", 443), opts)` or `DialTarget::parse("example.net:443")`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::error::TransportError;

/// The destination of one outbound connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DialTarget {
    /// An address: connected as is.
    Addr(SocketAddr),
    /// A host name and port: resolved off the async workers and shards, the addresses tried in
    /// order within the one dial deadline; the name is the TLS server name unless
    /// `DialOptions::server_name` or `tls_client.sni_override` says otherwise.
    Host {
        /// The host name (or an IP literal, which is connected without resolving).
        host: String,
        /// The port.
        port: u16,
    },
    /// A Unix-domain stream socket (backend `tcp` framing over `AF_UNIX`).
    Unix(PathBuf),
}

impl DialTarget {
    /// Parses `host:port`, `[v6]:port`, an IP address with its port, or `unix:/path` (also a
    /// bare absolute path) into a target. The error names what was wrong.
    pub fn parse(s: &str) -> Result<Self, TransportError> {
        let bad = |why: &str| TransportError::Unsupported {
            what: format!("dial target {s:?}: {why}"),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?;
        let port: u16 = port.parse().map_err(|_| bad("port is not a number"))?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
            Some(_) => return Err(bad("not an IPv6 literal in brackets")),
            None if host.contains(':') => return Err(bad("IPv6 literals go in brackets")),
            None => host,
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        Ok(Self::host(host, port))
    }

    /// A host-and-port target; an IP literal becomes [`DialTarget::Addr`].
    pub fn host(host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        match host.parse::<IpAddr>() {
            Ok(ip) => Self::Addr(SocketAddr::new(ip, port)),
            Err(_) => Self::Host { host, port },
        }
    }

    /// The address, when the target is one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Addr(a) => Some(*a),
            _ => None,
        }
    }

    /// The host name, when the target is one (what TLS uses as the server name by default).
    pub fn host_name(&self) -> Option<&str> {
        match self {
            Self::Host { host, .. } => Some(host),
            _ => None,
        }
    }

    /// The socket path, when the target is a Unix socket.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Self::Unix(p) => Some(p),
            _ => None,
        }
    }
}

impl fmt::Display for DialTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl From<SocketAddr> for DialTarget {
    fn from(a: SocketAddr) -> Self {
        Self::Addr(a)
    }
}

impl From<(IpAddr, u16)> for DialTarget {
    fn from((ip, port): (IpAddr, u16)) -> Self {
        Self::Addr(SocketAddr::new(ip, port))
    }
}

impl From<(&str, u16)> for DialTarget {
    fn from((host, port): (&str, u16)) -> Self {
        Self::host(host, port)
    }
}

impl From<(String, u16)> for DialTarget {
    fn from((host, port): (String, u16)) -> Self {
        Self::host(host, port)
    }
}

impl From<&Path> for DialTarget {
    fn from(p: &Path) -> Self {
        Self::Unix(p.to_path_buf())
    }
}

impl From<PathBuf> for DialTarget {
    fn from(p: PathBuf) -> Self {
        Self::Unix(p)
    }
}

/// Where a listener binds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ListenTarget {
    /// A TCP address (plain or TLS, as the engine's backend says).
    Addr(SocketAddr),
    /// A Unix-domain stream socket at this path (`uds.path`; `uds.allow_uids` applies).
    Unix(PathBuf),
}

impl ListenTarget {
    /// The address, when the target is one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Addr(a) => Some(*a),
            Self::Unix(_) => None,
        }
    }

    /// The socket path, when the target is a Unix socket.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Self::Unix(p) => Some(p),
            Self::Addr(_) => None,
        }
    }
}

impl fmt::Display for ListenTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl From<SocketAddr> for ListenTarget {
    fn from(a: SocketAddr) -> Self {
        Self::Addr(a)
    }
}

impl From<&Path> for ListenTarget {
    fn from(p: &Path) -> Self {
        Self::Unix(p.to_path_buf())
    }
}

impl From<PathBuf> for ListenTarget {
    fn from(p: PathBuf) -> Self {
        Self::Unix(p)
    }
}

/// The TLS server name of a dial (SNI and certificate check), by precedence:
/// `DialOptions::server_name`, then `tls_client.sni_override`, then the target's host name,
/// else the dialed IP address. Empty strings count as unset. A name that is neither a DNS name
/// nor an IP literal is a `Tls` error naming it.
pub(crate) fn tls_server_name(
    opts: &crate::engine::DialOptions,
    sni_override: Option<&str>,
    target: &DialTarget,
    addr: SocketAddr,
) -> Result<rustls_pki_types::ServerName<'static>, TransportError> {
    let name = [
        opts.server_name.as_deref(),
        sni_override,
        target.host_name(),
    ]
    .into_iter()
    .flatten()
    .find(|n| !n.is_empty());
    match name {
        Some(n) => {
            rustls_pki_types::ServerName::try_from(n.to_owned()).map_err(|e| TransportError::Tls {
                detail: format!("invalid server name {n:?}: {e}"),
            })
        }
        None => Ok(rustls_pki_types::ServerName::IpAddress(addr.ip().into())),
    }
}

/// The error an engine returns for a target kind it does not serve (yet).
pub(crate) fn unsupported_target(engine: &str, target: &dyn fmt::Display) -> TransportError {
    TransportError::Unsupported {
        what: format!("the {engine} engine cannot use target {target}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_shape() {
        assert_eq!(
            DialTarget::parse("127.0.0.1:80").unwrap(),
            DialTarget::Addr("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            DialTarget::parse("[::1]:443").unwrap(),
            DialTarget::Addr("[::1]:443".parse().unwrap())
        );
        assert_eq!(
            DialTarget::parse("localhost:9000").unwrap(),
            DialTarget::Host {
                host: "localhost".into(),
                port: 9000
            }
        );
        assert_eq!(
            DialTarget::parse("unix:/run/ron.sock").unwrap(),
            DialTarget::Unix("/run/ron.sock".into())
        );
        assert_eq!(
            DialTarget::parse("/run/ron.sock").unwrap(),
            DialTarget::Unix("/run/ron.sock".into())
        );
    }

    #[test]
    fn rejects_malformed_targets_with_a_reason() {
        for bad in [
            "localhost",
            "host:http",
            ":80",
            "unix:",
            "::1:80",
            "host:70000",
        ] {
            let e = DialTarget::parse(bad).unwrap_err();
            assert_eq!(e.kind(), "unsupported", "{bad}");
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn server_name_precedence() {
        use crate::engine::DialOptions;
        let host = DialTarget::host("svc.example", 443);
        let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
        let name = |o: Option<&str>, sni: Option<&str>, t: &DialTarget| {
            let opts = DialOptions {
                server_name: o.map(str::to_owned),
                ..DialOptions::default()
            };
            format!("{:?}", tls_server_name(&opts, sni, t, addr).unwrap())
        };
        assert!(name(Some("a.example"), Some("b.example"), &host).contains("a.example"));
        assert!(name(None, Some("b.example"), &host).contains("b.example"));
        assert!(name(None, None, &host).contains("svc.example"));
        let by_ip = tls_server_name(
            &DialOptions::default(),
            Some(""),
            &DialTarget::Addr(addr),
            addr,
        );
        assert!(matches!(
            by_ip.unwrap(),
            rustls_pki_types::ServerName::IpAddress(_)
        ));
        let opts = DialOptions {
            server_name: Some("bad name!".into()),
            ..DialOptions::default()
        };
        let e = tls_server_name(&opts, None, &host, addr).unwrap_err();
        assert_eq!(e.reject_reason(), Some(crate::RejectReason::Tls));
    }

    #[test]
    fn ip_literal_hosts_are_addresses() {
        assert_eq!(
            DialTarget::from(("10.1.2.3", 7)),
            DialTarget::Addr("10.1.2.3:7".parse().unwrap())
        );
        assert_eq!(
            DialTarget::from(("h.example", 7)).host_name(),
            Some("h.example")
        );
        assert_eq!(
            DialTarget::parse("h.example:7").unwrap().to_string(),
            "h.example:7"
        );
    }
}
