//! The rustls unbuffered pump (skeleton; the TLS-pump helper fills it).
