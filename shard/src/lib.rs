//! ron-shard: the thread-per-core io_uring runtime under ron-transport (mechanism only).
//!
//! NOTE(skeleton): the shard helper fills this crate; `tls_pump` belongs to the TLS-pump helper.

pub mod tls_pump;
