//! The rig's only calls into the kernel outside the io_uring peer: CPU affinity, the open-file
//! limit, and per-process CPU time / RSS read from `/proc`. Nothing here measures; callers
//! take two samples and subtract.

use std::io;
use std::time::Duration;

/// Pins the calling thread (and every thread it spawns afterwards) to `cores`.
#[allow(unsafe_code)]
pub fn pin_to(cores: &[usize]) -> io::Result<()> {
    if cores.is_empty() {
        return Ok(());
    }
    // SAFETY: `cpu_set_t` is a plain bit array for which all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cores {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("core {c} out of range"),
            ));
        }
        // SAFETY: `c < CPU_SETSIZE` was checked above, so CPU_SET stays inside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid, initialised cpu_set_t and the size
    // passed is exactly its size.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lowers the calling thread's CPU priority to `nice` (Linux: `setpriority(PRIO_PROCESS, 0)`
/// applies to the calling thread only).
#[allow(unsafe_code)]
pub fn nice_thread(nice: i32) -> io::Result<()> {
    // SAFETY: plain syscall wrapper with integer arguments; who = 0 is the calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE's soft limit to `min(want, hard)`; returns the new soft limit.
#[allow(unsafe_code)]
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let target = want.min(lim.rlim_max);
    if lim.rlim_cur < target {
        lim.rlim_cur = target;
        // SAFETY: `lim` is a valid rlimit with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Clock ticks per second for `/proc/<pid>/stat` times.
#[allow(unsafe_code)]
fn clk_tck() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t <= 0 {
        100
    } else {
        t as u64
    }
}

/// User + system CPU time consumed so far by every thread of process `pid` (`None` = self).
pub fn cpu_time(pid: Option<u32>) -> io::Result<Duration> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let s = std::fs::read_to_string(path)?;
    let (utime, stime) = parse_stat_times(&s)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))?;
    let tck = clk_tck();
    let ticks = utime + stime;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / tck))
}

/// `(utime, stime)` in ticks from the text of `/proc/<pid>/stat` (fields 14 and 15; the
/// command name in field 2 may contain spaces and parentheses, so parse after the last `)`).
pub fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut it = after.split_whitespace();
    // After ")" come field 3 (state) .. ; utime is field 14 → index 11 here.
    let utime = it.nth(11)?.parse().ok()?;
    let stime = it.next()?.parse().ok()?;
    Some((utime, stime))
}

/// `(idle, total)` jiffies so far of `cores` from `/proc/stat` (every core's `cpuN` line;
/// the aggregate `cpu` line when `cores` is empty). Idle counts `idle` + `iowait`; everything
/// else, `steal` included, is time the cores were not available to an idle waiter.
pub fn cores_ticks(cores: &[usize]) -> io::Result<(u64, u64)> {
    parse_cores_ticks(&std::fs::read_to_string("/proc/stat")?, cores)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc/stat"))
}

/// [`cores_ticks`] over the text of `/proc/stat`.
pub fn parse_cores_ticks(stat: &str, cores: &[usize]) -> Option<(u64, u64)> {
    let mut acc = (0u64, 0u64);
    let mut found = 0;
    for line in stat.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(id) = name.strip_prefix("cpu") else {
            continue;
        };
        let wanted = if cores.is_empty() {
            id.is_empty()
        } else {
            id.parse::<usize>().is_ok_and(|n| cores.contains(&n))
        };
        if !wanted {
            continue;
        }
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let v: Vec<u64> = it.take(8).filter_map(|x| x.parse().ok()).collect();
        if v.len() < 5 {
            return None;
        }
        acc.0 += v[3] + v[4];
        acc.1 += v.iter().sum::<u64>();
        found += 1;
    }
    (found > 0).then_some(acc)
}

/// Idle share (0..=1) of `cores` between two [`cores_ticks`] samples.
pub fn idle_share(a: (u64, u64), b: (u64, u64)) -> Option<f64> {
    let total = b.1.checked_sub(a.1)?;
    (total > 0).then(|| b.0.saturating_sub(a.0) as f64 / total as f64)
}

/// Resident set size of process `pid` in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vmrss(&s).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS"))
}

/// VmRSS in bytes from the text of `/proc/<pid>/status`.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The running kernel release (`uname -r`).
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Online CPUs.
pub fn cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_parse_with_spaces_in_comm() {
        let s = "1234 (my (odd) proc) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15";
        assert_eq!(parse_stat_times(s), Some((111, 222)));
    }

    #[test]
    fn vmrss_parse() {
        let s = "Name:\tx\nVmPeak:\t 10 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_vmrss(s), Some(2048 * 1024));
        assert_eq!(parse_vmrss("Name: x\n"), None);
    }

    #[test]
    fn proc_stat_cores() {
        let s = "cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 5 0 5 30 5 0 0 5 0 0\n\
                 cpu1 5 0 5 40 5 0 0 0 0 0\nintr 1 2 3\n";
        assert_eq!(parse_cores_ticks(s, &[]), Some((80, 100)));
        assert_eq!(parse_cores_ticks(s, &[0]), Some((35, 50)));
        assert_eq!(parse_cores_ticks(s, &[0, 1]), Some((80, 105)));
        assert_eq!(parse_cores_ticks(s, &[7]), None);
        assert_eq!(idle_share((35, 50), (45, 70)), Some(0.5));
        assert!(cores_ticks(&[]).is_ok());
    }

    #[test]
    fn self_cpu_time_is_readable() {
        assert!(cpu_time(None).is_ok());
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
