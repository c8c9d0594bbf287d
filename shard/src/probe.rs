//! `probe()`: does io_uring work here, and does it support what the shards need? Used by the
//! root crate's engine auto-selection; failures are classified so the caller can say why it
//! fell back (seccomp, `kernel.io_uring_disabled`, ENOSYS, locked memory, missing opcodes).
#![forbid(unsafe_code)]

use std::io;

use crate::sys;

/// Why io_uring is not usable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProbeFailure {
    /// `/proc/sys/kernel/io_uring_disabled` forbids it (1: only a privileged group, 2: nobody).
    Disabled {
        /// The sysctl value.
        sysctl: u8,
    },
    /// `io_uring_setup` returned EPERM with the sysctl allowing it: a seccomp profile blocks it.
    Seccomp,
    /// `io_uring_setup` returned ENOSYS (kernel without io_uring, or seccomp returning ENOSYS).
    NotSupported,
    /// Registration failed with ENOMEM: the locked-memory limit is too small.
    LockedMemory,
    /// The kernel lacks opcodes the shards need.
    MissingOpcodes(Vec<&'static str>),
    /// Anything else (errno and message).
    Other(String),
}

impl ProbeFailure {
    /// Stable reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Disabled { .. } => "io_uring_disabled",
            Self::Seccomp => "seccomp",
            Self::NotSupported => "enosys",
            Self::LockedMemory => "memlock",
            Self::MissingOpcodes(_) => "missing_opcodes",
            Self::Other(_) => "error",
        }
    }
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Disabled { sysctl } => write!(f, "kernel.io_uring_disabled = {sysctl}"),
            Self::Seccomp => f.write_str("io_uring_setup: EPERM (seccomp profile blocks io_uring)"),
            Self::NotSupported => {
                f.write_str("io_uring_setup: ENOSYS (no io_uring in this kernel)")
            }
            Self::LockedMemory => f.write_str(
                "ENOMEM registering ring memory: RLIMIT_MEMLOCK too small (often 8 MiB for \
                 non-root); raise `ulimit -l` or use fewer shards/entries",
            ),
            Self::MissingOpcodes(v) => write!(f, "missing io_uring opcodes: {}", v.join(", ")),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbeReport {
    /// The shard runtime can run here.
    pub usable: bool,
    /// Why not, if not.
    pub failure: Option<ProbeFailure>,
    /// `/proc/sys/kernel/io_uring_disabled`, if readable.
    pub io_uring_disabled: Option<u8>,
    /// SINGLE_ISSUER | DEFER_TASKRUN accepted.
    pub defer_taskrun: bool,
    /// Needed opcodes and whether each is supported.
    pub opcodes: Vec<(&'static str, bool)>,
    /// Optional opcodes (used when present) and whether each is supported.
    pub optional: Vec<(&'static str, bool)>,
}

impl ProbeReport {
    /// True if the optional opcode `name` is supported.
    pub fn supports(&self, name: &str) -> bool {
        self.opcodes
            .iter()
            .chain(self.optional.iter())
            .any(|(n, ok)| *n == name && *ok)
    }
}

/// Probes io_uring: creates a ring with the shard flags, registers a provided-buffer ring, and
/// checks the opcodes.
pub fn probe() -> ProbeReport {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    let mut report = ProbeReport {
        usable: false,
        failure: None,
        io_uring_disabled: sysctl,
        defer_taskrun: false,
        opcodes: Vec::new(),
        optional: Vec::new(),
    };
    let codes: Vec<u8> = sys::NEEDED_OPCODES
        .iter()
        .chain(sys::OPTIONAL_OPCODES)
        .map(|(_, c)| *c)
        .collect();
    let supported = match sys::probe_opcodes(&codes) {
        Ok(s) => s,
        Err(e) => {
            report.failure = Some(classify(&e, sysctl));
            return report;
        }
    };
    let n = sys::NEEDED_OPCODES.len();
    report.opcodes = sys::NEEDED_OPCODES
        .iter()
        .zip(&supported[..n])
        .map(|((name, _), ok)| (*name, *ok))
        .collect();
    report.optional = sys::OPTIONAL_OPCODES
        .iter()
        .zip(&supported[n..])
        .map(|((name, _), ok)| (*name, *ok))
        .collect();
    let missing: Vec<&'static str> = report
        .opcodes
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        report.failure = Some(ProbeFailure::MissingOpcodes(missing));
        return report;
    }
    match sys::probe_ring(true) {
        Ok(defer) => {
            report.defer_taskrun = defer;
            report.usable = true;
        }
        Err(e) => report.failure = Some(classify(&e, sysctl)),
    }
    report
}

fn classify(e: &io::Error, sysctl: Option<u8>) -> ProbeFailure {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => match sysctl {
            Some(v @ 1..) => ProbeFailure::Disabled { sysctl: v },
            _ => ProbeFailure::Seccomp,
        },
        Some(libc::ENOSYS) => ProbeFailure::NotSupported,
        Some(libc::ENOMEM) => ProbeFailure::LockedMemory,
        _ => ProbeFailure::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let err = |n| io::Error::from_raw_os_error(n);
        assert_eq!(classify(&err(libc::EPERM), Some(0)), ProbeFailure::Seccomp);
        assert_eq!(
            classify(&err(libc::EPERM), Some(2)),
            ProbeFailure::Disabled { sysctl: 2 }
        );
        assert_eq!(
            classify(&err(libc::ENOSYS), None),
            ProbeFailure::NotSupported
        );
        assert_eq!(classify(&err(libc::ENOMEM), Some(0)).reason(), "memlock");
        assert_eq!(classify(&err(libc::EINVAL), Some(0)).reason(), "error");
    }

    #[test]
    fn probe_reports_a_verdict() {
        let r = probe();
        assert_eq!(r.usable, r.failure.is_none(), "{r:?}");
        if !r.usable {
            eprintln!(
                "skipping opcode assertions: io_uring unusable here: {:?}",
                r.failure
            );
            return;
        }
        assert!(r.supports("recv") && r.supports("accept") && r.supports("sendmsg"));
    }
}
