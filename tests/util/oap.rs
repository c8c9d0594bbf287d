//! A test-support OAP/1 codec (spec/INTEROP.md §2.1) for the interop vectors in
//! `tests/vectors/`. It lives here only: the transport never parses OAP — it carries the bytes
//! after OAP's u32 `len` as one frame, and this module reads the fields inside that frame.
//!
//! Layout after `len` (all big-endian): `ver u8, flags u16, code u16, app_proto_id u16,
//! tenant_id u128, cap_len u16, corr_id u64` (33 bytes), then `cap_len` capability bytes, then
//! the payload. Flag bit values are the ones `tests/vectors/oap1.json` declares.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the header after `len`.
pub const HEADER_LEN: usize = 33;

/// Flag names and bits, in bit order.
pub const FLAGS: [(&str, u16); 8] = [
    ("REQ", 1),
    ("RESP", 2),
    ("EVENT", 4),
    ("START", 8),
    ("END", 16),
    ("ACK_REQ", 32),
    ("COMP", 64),
    ("APP_E2E", 128),
];

/// `REQ`.
pub const REQ: u16 = 1;
/// `RESP`.
pub const RESP: u16 = 2;
/// `COMP`.
pub const COMP: u16 = 64;

/// One OAP/1 frame (without `len`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub ver: u8,
    pub flags: u16,
    pub code: u16,
    pub app_proto_id: u16,
    pub tenant_id: u128,
    pub corr_id: u64,
    pub cap: Bytes,
    pub payload: Bytes,
}

/// Why bytes are not an OAP/1 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OapError {
    /// Fewer than [`HEADER_LEN`] bytes.
    Short(usize),
    /// `cap_len` points past the end.
    CapOverrun { cap_len: usize, left: usize },
    /// A flag bit with no name is set.
    ReservedFlags(u16),
}

impl Frame {
    /// A request with no capability.
    pub fn request(flags: u16, app_proto_id: u16, corr_id: u64, payload: Bytes) -> Self {
        Self {
            ver: 1,
            flags,
            code: 0,
            app_proto_id,
            tenant_id: 0,
            corr_id,
            cap: Bytes::new(),
            payload,
        }
    }

    /// The response to `self` with `code` and `payload` (corr_id and app_proto_id kept).
    pub fn response(&self, code: u16, payload: Bytes) -> Self {
        Self {
            ver: 1,
            flags: RESP,
            code,
            app_proto_id: self.app_proto_id,
            tenant_id: self.tenant_id,
            corr_id: self.corr_id,
            cap: Bytes::new(),
            payload,
        }
    }

    /// The frame body as the transport carries it (everything after `len`).
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + self.cap.len() + self.payload.len());
        b.put_u8(self.ver);
        b.put_u16(self.flags);
        b.put_u16(self.code);
        b.put_u16(self.app_proto_id);
        b.put_u128(self.tenant_id);
        b.put_u16(u16::try_from(self.cap.len()).expect("cap fits u16"));
        b.put_u64(self.corr_id);
        b.extend_from_slice(&self.cap);
        b.extend_from_slice(&self.payload);
        b.freeze()
    }

    /// `len` + body: the frame on the wire.
    pub fn encode_wire(&self) -> Vec<u8> {
        let body = self.encode();
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&body);
        v
    }

    /// Parses a frame body (the transport already removed `len`).
    pub fn decode(mut body: Bytes) -> Result<Self, OapError> {
        if body.len() < HEADER_LEN {
            return Err(OapError::Short(body.len()));
        }
        let ver = body.get_u8();
        let flags = body.get_u16();
        let code = body.get_u16();
        let app_proto_id = body.get_u16();
        let tenant_id = body.get_u128();
        let cap_len = usize::from(body.get_u16());
        let corr_id = body.get_u64();
        if cap_len > body.len() {
            return Err(OapError::CapOverrun {
                cap_len,
                left: body.len(),
            });
        }
        let known: u16 = FLAGS.iter().map(|(_, b)| b).sum();
        if flags & !known != 0 {
            return Err(OapError::ReservedFlags(flags & !known));
        }
        let cap = body.split_to(cap_len);
        Ok(Self {
            ver,
            flags,
            code,
            app_proto_id,
            tenant_id,
            corr_id,
            cap,
            payload: body,
        })
    }
}

/// Flag bits from names; `None` for an unknown name.
pub fn flags_from_names<S: AsRef<str>>(names: &[S]) -> Option<u16> {
    names.iter().try_fold(0u16, |acc, n| {
        FLAGS
            .iter()
            .find(|(name, _)| *name == n.as_ref())
            .map(|(_, bit)| acc | bit)
    })
}

/// Names of the set flags, in bit order.
pub fn flag_names(flags: u16) -> Vec<&'static str> {
    FLAGS
        .iter()
        .filter(|(_, bit)| flags & bit != 0)
        .map(|(n, _)| *n)
        .collect()
}
