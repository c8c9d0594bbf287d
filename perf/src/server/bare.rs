//! `bare-uring`: the smallest honest io_uring echo server, the overhead floor every engine is
//! compared with. One ring per thread; per connection one growable buffer and exactly one
//! operation in flight (a receive into the free tail of the buffer, or a send of every
//! complete frame at its head, in one submission); one `io_uring_enter` per loop turn submits
//! everything queued and waits for at least one completion. No limits, no metrics, no TLS,
//! no timeouts: it only shows what the kernel path costs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

use crate::wire;

const ACCEPT: u64 = u64::MAX;
const KIND_RECV: u64 = 0;
const KIND_SEND: u64 = 1;
const INITIAL_BUF: usize = 16 * 1024;
const MAX_BUF: usize = 4 * 1024 * 1024;

struct Conn {
    fd: OwnedFd,
    /// `buf.len()` is the capacity in use; `filled` bytes at its head are received data.
    buf: Vec<u8>,
    filled: usize,
    /// Bytes at the head being sent, and how many of them are already sent.
    send_len: usize,
    sent: usize,
}

fn user_data(key: usize, kind: u64) -> u64 {
    ((key as u64) << 1) | kind
}

/// Serves `listener` forever on the calling thread. Returns only on a ring error; the process
/// then exits (see the SAFETY argument in [`Ring::push`]).
pub fn serve(listener: std::net::TcpListener) -> anyhow::Result<()> {
    let r = run(&listener);
    if let Err(e) = &r {
        eprintln!("bare-uring: fatal: {e}");
        // In-flight operations may still reference connection buffers: never unwind past
        // them; end the process instead.
        std::process::exit(1);
    }
    Ok(r?)
}

struct Ring {
    ring: IoUring,
}

impl Ring {
    /// Queues `e`, flushing the submission queue to the kernel first if it is full.
    ///
    /// # Safety
    /// Every buffer `e` points to must stay valid and unmoved until its completion has been
    /// reaped.
    #[allow(unsafe_code)]
    unsafe fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }
}

#[allow(unsafe_code)]
fn run(listener: &std::net::TcpListener) -> io::Result<()> {
    let mut conns: slab::Slab<Conn> = slab::Slab::with_capacity(1024);
    let ring = IoUring::builder()
        .setup_cqsize(32 * 1024)
        .setup_single_issuer()
        .setup_coop_taskrun()
        .build(4096)?;
    let mut ring = Ring { ring };
    let lfd = listener.as_raw_fd();
    let accept = || {
        opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
            .build()
            .user_data(ACCEPT)
    };
    // SAFETY: Accept with null address pointers references no memory.
    unsafe { ring.push(&accept())? };
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(1024);
    loop {
        match ring.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINTR)
                    || e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        done.clear();
        done.extend(ring.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &done {
            if ud == ACCEPT {
                if res >= 0 {
                    // SAFETY: a successful accept returns a new descriptor that nothing else
                    // owns.
                    let fd = unsafe { OwnedFd::from_raw_fd(res as RawFd) };
                    let _ = socket2::SockRef::from(&fd).set_nodelay(true);
                    let key = conns.insert(Conn {
                        fd,
                        buf: vec![0u8; INITIAL_BUF],
                        filled: 0,
                        send_len: 0,
                        sent: 0,
                    });
                    // SAFETY: see `queue_recv`.
                    unsafe { queue_recv(&mut ring, &mut conns, key)? };
                }
                // SAFETY: Accept references no memory.
                unsafe { ring.push(&accept())? };
                continue;
            }
            let key = (ud >> 1) as usize;
            let kind = ud & 1;
            if !conns.contains(key) {
                continue;
            }
            if res <= 0 {
                // EOF or error: the completed op was this connection's only one in flight,
                // so dropping its buffer and descriptor is sound.
                conns.remove(key);
                continue;
            }
            let n = res as usize;
            if kind == KIND_RECV {
                conns[key].filled += n;
                // SAFETY: see `after_data`.
                if !unsafe { after_data(&mut ring, &mut conns, key)? } {
                    conns.remove(key);
                }
            } else {
                let c = &mut conns[key];
                c.sent += n;
                if c.sent < c.send_len {
                    // SAFETY: see `queue_send`.
                    unsafe { queue_send(&mut ring, &mut conns, key)? };
                } else {
                    let c = &mut conns[key];
                    c.buf.copy_within(c.send_len..c.filled, 0);
                    c.filled -= c.send_len;
                    c.send_len = 0;
                    c.sent = 0;
                    // SAFETY: see `after_data`.
                    if !unsafe { after_data(&mut ring, &mut conns, key)? } {
                        conns.remove(key);
                    }
                }
            }
        }
    }
}

/// With no operation in flight for `key`: sends the complete frames at the head of its buffer,
/// or grows the buffer if needed and receives more. `Ok(false)` = bad frame, close it.
///
/// # Safety
/// No operation may be in flight for `key`.
#[allow(unsafe_code)]
unsafe fn after_data(
    ring: &mut Ring,
    conns: &mut slab::Slab<Conn>,
    key: usize,
) -> io::Result<bool> {
    let c = &mut conns[key];
    let Ok(sc) = wire::scan(&c.buf[..c.filled]) else {
        return Ok(false);
    };
    if sc.complete_bytes > 0 {
        c.send_len = sc.complete_bytes;
        c.sent = 0;
        // SAFETY: nothing in flight for `key` (caller's contract).
        unsafe { queue_send(ring, conns, key)? };
        return Ok(true);
    }
    let need = sc.next_frame_len.unwrap_or(wire::HEADER).max(c.filled + 1);
    if need > c.buf.len() {
        // Resizing is sound: no operation references the buffer now (caller's contract).
        let new_len = need.max(2 * c.buf.len()).min(MAX_BUF.max(need));
        c.buf.resize(new_len, 0);
    }
    // SAFETY: nothing in flight for `key` (caller's contract).
    unsafe { queue_recv(ring, conns, key)? };
    Ok(true)
}

/// # Safety
/// No other operation may be in flight for `key`.
#[allow(unsafe_code)]
unsafe fn queue_recv(ring: &mut Ring, conns: &mut slab::Slab<Conn>, key: usize) -> io::Result<()> {
    let c = &mut conns[key];
    let tail = &mut c.buf[c.filled..];
    let e = opcode::Recv::new(
        types::Fd(c.fd.as_raw_fd()),
        tail.as_mut_ptr(),
        tail.len() as u32,
    )
    .build()
    .user_data(user_data(key, KIND_RECV));
    // SAFETY: the receive writes `c.buf[filled..]`, a heap block owned by the slab entry (it does
    // not move when the slab grows); the entry is removed and the Vec resized only in this
    // connection's completion handler, after its single in-flight op completed, and the process
    // exits rather than unwinding past in-flight operations (`serve`).
    unsafe { ring.push(&e) }
}

/// # Safety
/// No other operation may be in flight for `key`.
#[allow(unsafe_code)]
unsafe fn queue_send(ring: &mut Ring, conns: &mut slab::Slab<Conn>, key: usize) -> io::Result<()> {
    let c = &mut conns[key];
    let out = &c.buf[c.sent..c.send_len];
    let e = opcode::Send::new(types::Fd(c.fd.as_raw_fd()), out.as_ptr(), out.len() as u32)
        .build()
        .user_data(user_data(key, KIND_SEND));
    // SAFETY: as in `queue_recv`: `c.buf[sent..send_len]` stays allocated, unmoved and
    // unmodified until this send completes, because the connection has no other operation in
    // flight and is only changed in that completion's handler.
    unsafe { ring.push(&e) }
}
