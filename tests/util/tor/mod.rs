//! A private Tor network on loopback, for the Arti tests: three directory authorities, two
//! middle relays and one exit (C tor from the distribution, `TestingTorNetwork 1`), all on
//! 127.0.0.1 inside a fresh network namespace (`unshare -n`), so nothing can leave the machine.
//!
//! The tests using it re-execute themselves inside the namespace ([`run_in_netns`]); there the
//! fixture ([`TorNet::start`]) generates the authorities' keys (`tor-gencert`), the relays'
//! identities (`tor --list-fingerprint`), writes one torrc per node and starts them. Every
//! child is killed when the fixture drops (also on panic), and gets `SIGKILL` from the kernel
//! if the test process dies first (`PR_SET_PDEATHSIG`); the namespace disappears with its last
//! process. [`TorNet::arti_toml`] is the Arti client configuration for this network (both the
//! authorities and the fallback caches overridden).
//!
//! (The transport itself never spawns tor: spec/IDB I-17. Only this test support does.)
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the re-executed test process inside the namespace.
pub const NETNS_ENV: &str = "RON_ARTI_NETNS";

/// First ORPort (authority i: 5000+i; relays follow).
const OR_BASE: u16 = 5000;
/// First DirPort.
const DIR_BASE: u16 = 7000;
/// Voting interval after the first consensus (s). Onion services need the HS time period
/// (24 × this) to be at least Arti's minimum of 5 minutes: 15 s ⇒ 6 minutes.
pub const VOTING_INTERVAL_SECS: u64 = 15;

/// One node of the network.
#[derive(Clone, Debug)]
struct Node {
    name: String,
    dir: PathBuf,
    or_port: u16,
    dir_port: u16,
    authority: bool,
    exit: bool,
    rsa_fp: String,
    ed_id: String,
    v3ident: Option<String>,
}

/// The running network. Dropping it kills every node.
#[derive(Debug)]
pub struct TorNet {
    root: PathBuf,
    nodes: Vec<Node>,
    children: Vec<(String, Child)>,
    /// When the nodes were started.
    pub started: Instant,
    /// The exit accepts this port and the nine after it on any address (and all of
    /// 127.0.0.0/8).
    pub echo_port: u16,
}

/// Why the network tests cannot run here, if they cannot: a missing tool or no permission to
/// create a network namespace.
pub fn prerequisites() -> Result<(), String> {
    for tool in ["tor", "tor-gencert", "unshare", "ip"] {
        if which(tool).is_none() {
            return Err(format!(
                "`{tool}` is not installed (apt-get install tor iproute2 util-linux)"
            ));
        }
    }
    let out = Command::new("unshare")
        .args(["-n", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "no permission to create a network namespace (`unshare -n`): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// True inside the re-executed test process (in the private namespace).
pub fn in_netns() -> bool {
    std::env::var_os(NETNS_ENV).is_some()
}

/// Outcome of [`run_in_netns`].
#[derive(Debug, PartialEq, Eq)]
pub enum NetnsRun {
    /// The test ran inside the namespace and passed.
    Passed,
    /// A prerequisite is missing on this host (the reason was printed).
    Skipped(String),
}

/// Re-runs the test `name` (the full libtest path) of this test binary inside a fresh network
/// namespace with only `lo` (brought up), with `limit` as a hard bound per attempt. Panics if
/// it fails; prints and returns `Skipped` when the host lacks a prerequisite.
///
/// The private networks of different tests never run at once (a process-wide lock: two Tor
/// networks bootstrapping side by side on a 2-core CI machine starved each other), and a run
/// whose network did not come up is retried once on a fresh network, with the first attempt's
/// failure printed: a clean-clone CI run saw Arti give up bootstrapping once ("had to reset
/// bootstrapping too many times") while the other test's network was also starting.
pub fn run_in_netns(name: &str, limit: Duration) -> NetnsRun {
    static ONE_NETWORK_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_NETWORK_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match run_once(name, limit) {
        Ok(r) => r,
        Err(first) => {
            println!("RETRY {name} on a fresh network after: {first}");
            match run_once(name, limit) {
                Ok(r) => r,
                Err(second) => panic!("{second} (first attempt: {first})"),
            }
        }
    }
}

/// One attempt of [`run_in_netns`]. Re-runs the test `name` (the full libtest path, e.g. `private_network_exit_and_onion`) of
/// this test binary inside a fresh network namespace with only `lo` (brought up), with
/// `limit` as a hard bound. Panics if it fails; prints and returns `Skipped` when the host
/// lacks a prerequisite.
fn run_once(name: &str, limit: Duration) -> Result<NetnsRun, String> {
    if let Err(reason) = prerequisites() {
        println!("SKIPPED {name}: {reason}");
        return Ok(NetnsRun::Skipped(reason));
    }
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-n",
        "--",
        "sh",
        "-c",
        "ip link set lo up && exec \"$0\" \"$@\"",
    ])
    .arg(&exe)
    .args([
        name,
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ])
    .env(NETNS_ENV, "1")
    .stdin(Stdio::null());
    die_with_parent(&mut cmd);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn unshare");
    loop {
        match child.try_wait().expect("wait") {
            Some(status) if status.success() => return Ok(NetnsRun::Passed),
            Some(status) => {
                return Err(format!(
                    "{name} failed inside the network namespace ({status}) after {:?}",
                    started.elapsed()
                ))
            }
            None if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} exceeded {limit:?} inside the network namespace; killed"
                ));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The child gets SIGKILL when this (test) process dies, whatever the path.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: `prctl(PR_SET_PDEATHSIG)` is async-signal-safe and touches no memory of the
    // parent; it is the only call made between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn run(cmd: &mut Command, what: &str) -> io::Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn private_dir(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
}

impl TorNet {
    /// Generates keys and configuration under `root` and starts 3 authorities, 2 middle relays
    /// and 1 exit. Must run inside the private namespace.
    pub fn start(root: &Path, echo_port: u16) -> io::Result<Self> {
        assert!(
            in_netns(),
            "the private Tor network only runs inside its namespace"
        );
        let names = ["auth0", "auth1", "auth2", "relay0", "relay1", "exit0"];
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let dir = root.join(name);
            private_dir(&dir.join("keys"))?;
            let authority = i < 3;
            let or_port = OR_BASE + i as u16;
            let dir_port = DIR_BASE + i as u16;
            let mut v3ident = None;
            if authority {
                // An authority identity + signing key, certificate valid for 12 months.
                let mut gencert = Command::new("tor-gencert");
                gencert
                    .current_dir(&dir)
                    .args(["--create-identity-key", "-m", "12", "-a"])
                    .arg(format!("127.0.0.1:{dir_port}"))
                    .args([
                        "-i",
                        "keys/authority_identity_key",
                        "-s",
                        "keys/authority_signing_key",
                        "-c",
                        "keys/authority_certificate",
                        "--passphrase-fd",
                        "0",
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                // An empty passphrase on stdin.
                let mut child = gencert.stdin(Stdio::piped()).spawn()?;
                {
                    use std::io::Write;
                    let mut stdin = child.stdin.take().expect("stdin");
                    stdin.write_all(b"\n")?;
                }
                let out = child.wait_with_output()?;
                if !out.status.success() {
                    return Err(io::Error::other(format!(
                        "tor-gencert failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
                let cert = std::fs::read_to_string(dir.join("keys/authority_certificate"))?;
                v3ident = cert
                    .lines()
                    .find_map(|l| l.strip_prefix("fingerprint "))
                    .map(|s| s.trim().to_owned());
            }
            run(
                Command::new("tor")
                    .arg("--list-fingerprint")
                    .arg("--DataDirectory")
                    .arg(&dir)
                    .args(["--ORPort", &or_port.to_string(), "--Nickname", name])
                    .args(["--Address", "127.0.0.1", "--Log", "err stderr"]),
                "tor --list-fingerprint",
            )?;
            let second = |file: &str| -> io::Result<String> {
                let text = std::fs::read_to_string(dir.join(file))?;
                text.split_whitespace()
                    .nth(1)
                    .map(str::to_owned)
                    .ok_or_else(|| io::Error::other(format!("empty {file}")))
            };
            nodes.push(Node {
                name: (*name).to_owned(),
                rsa_fp: second("fingerprint")?,
                ed_id: second("fingerprint-ed25519")?,
                dir,
                or_port,
                dir_port,
                authority,
                exit: *name == "exit0",
                v3ident,
            });
        }
        let mut dir_authorities = String::new();
        for n in nodes.iter().filter(|n| n.authority) {
            writeln!(
                dir_authorities,
                "DirAuthority {} orport={} no-v2 v3ident={} 127.0.0.1:{} {}",
                n.name,
                n.or_port,
                n.v3ident.as_deref().unwrap_or_default(),
                n.dir_port,
                n.rsa_fp
            )
            .expect("write");
        }
        // The exit is the only Exit and never a Guard: with one primary guard (small network),
        // a client whose guard were the exit could not build an exit circuit at all.
        let fp = |n: &Node| format!("${}", n.rsa_fp);
        let votes = format!(
            "TestingDirAuthVoteExit {}\nTestingDirAuthVoteGuard {}\n",
            nodes
                .iter()
                .filter(|n| n.exit)
                .map(fp)
                .collect::<Vec<_>>()
                .join(","),
            nodes
                .iter()
                .filter(|n| !n.exit)
                .map(fp)
                .collect::<Vec<_>>()
                .join(","),
        );
        for n in &nodes {
            std::fs::write(
                n.dir.join("torrc"),
                torrc(n, &dir_authorities, &votes, echo_port),
            )?;
        }
        let mut net = Self {
            root: root.to_path_buf(),
            nodes,
            children: Vec::new(),
            started: Instant::now(),
            echo_port,
        };
        for i in 0..net.nodes.len() {
            let n = net.nodes[i].clone();
            let log = std::fs::File::create(n.dir.join("stdout.log"))?;
            let mut cmd = Command::new("tor");
            cmd.arg("-f")
                .arg(n.dir.join("torrc"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            die_with_parent(&mut cmd);
            let child = cmd.spawn()?;
            net.children.push((n.name.clone(), child));
        }
        net.started = Instant::now();
        Ok(net)
    }

    /// The Arti client configuration (TOML) for this network: authorities and fallback caches
    /// overridden, local addresses allowed (the exit connects to 127.0.0.1), the subnet-family
    /// rule relaxed (every relay shares 127.0.0.1), and the HS time period matching the
    /// voting interval.
    pub fn arti_toml(&self) -> String {
        let mut t = String::new();
        t.push_str("[tor_network]\nfallback_caches = [\n");
        for n in self.nodes.iter().filter(|n| n.authority) {
            writeln!(
                t,
                "  {{ rsa_identity = \"{}\", ed_identity = \"{}\", orports = [\"127.0.0.1:{}\"] }},",
                n.rsa_fp, n.ed_id, n.or_port
            )
            .expect("write");
        }
        t.push_str("]\n[tor_network.authorities]\nv3idents = [\n");
        for n in self.nodes.iter().filter(|n| n.authority) {
            writeln!(t, "  \"{}\",", n.v3ident.as_deref().unwrap_or_default()).expect("write");
        }
        t.push_str("]\n");
        t.push_str(
            "[path_rules]\nipv4_subnet_family_prefix = 33\nipv6_subnet_family_prefix = 129\n",
        );
        t.push_str("[address_filter]\nallow_local_addrs = true\n");
        // 24 voting intervals, in minutes.
        writeln!(
            t,
            "[override_net_params]\nhsdir-interval = {}\nguard-min-filtered-sample-size = 3\n\
             guard-n-primary-guards = 1\nguard-n-primary-guards-to-use = 1\n\
             guard-n-primary-dir-guards-to-use = 1",
            VOTING_INTERVAL_SECS * 24 / 60
        )
        .expect("write");
        t
    }

    /// Onion-service settings for a six-relay network (three introduction points: Arti's minimum).
    pub fn onion_service_toml(&self) -> String {
        "num_intro_points = 3\n".to_owned()
    }

    /// Stops the authorities only (the relays stay up): the network cannot bootstrap anyone.
    pub fn stop_authorities(&mut self) {
        let names: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.authority)
            .map(|n| n.name.clone())
            .collect();
        for (name, child) in &mut self.children {
            if names.contains(name) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The last `lines` lines of every node's notice log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(n.dir.join("notice.log")).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            writeln!(out, "== {}", n.name).expect("write");
            for l in &all[from..] {
                writeln!(out, "{l}").expect("write");
            }
        }
        out
    }

    /// Whether an authority's current microdesc consensus lists the exit with its Exit flag.
    pub fn consensus_has_exit(&self) -> bool {
        self.nodes.iter().filter(|n| n.authority).any(|n| {
            let text = std::fs::read_to_string(n.dir.join("cached-microdesc-consensus"))
                .unwrap_or_default();
            let mut lines = text.lines();
            while let Some(l) = lines.next() {
                if l.starts_with("r exit0 ") {
                    // `r`, then `m` (microdesc digest), then `s` (flags).
                    return lines
                        .find(|s| s.starts_with("s ") || s.starts_with("r "))
                        .is_some_and(|s| s.starts_with("s ") && s.contains(" Exit "));
                }
            }
            false
        })
    }

    /// Whether the exit itself has a consensus and has bootstrapped (before that it refuses
    /// streams).
    pub fn exit_bootstrapped(&self) -> bool {
        self.nodes.iter().filter(|n| n.exit).all(|n| {
            std::fs::read_to_string(n.dir.join("notice.log"))
                .map(|t| t.contains("Bootstrapped 100%"))
                .unwrap_or(false)
        })
    }

    /// Waits until a published consensus lists the exit and the exit has bootstrapped (relays publish their descriptors a
    /// few seconds after start; a client that bootstraps on an earlier consensus is "ready"
    /// but has no exit until its next consensus fetch). Returns the time since start.
    pub fn wait_for_exit(&self, limit: Duration) -> io::Result<Duration> {
        while !(self.consensus_has_exit() && self.exit_bootstrapped()) {
            if self.started.elapsed() > limit {
                return Err(io::Error::other(format!(
                    "no consensus with the exit after {limit:?}\n{}",
                    self.log_tails(8)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(self.started.elapsed())
    }

    /// Whether the authorities have published a consensus (from their logs).
    pub fn has_consensus(&self) -> bool {
        self.nodes.iter().filter(|n| n.authority).any(|n| {
            std::fs::read_to_string(n.dir.join("notice.log"))
                .map(|t| t.contains("Consensus computed"))
                .unwrap_or(false)
        })
    }

    /// Where the nodes keep their data.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Kills every node and waits for it.
    pub fn stop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for TorNet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn torrc(n: &Node, dir_authorities: &str, votes: &str, echo_port: u16) -> String {
    let mut t = format!(
        "TestingTorNetwork 1\n\
         DataDirectory {dir}\n\
         RunAsDaemon 0\n\
         Nickname {name}\n\
         Address 127.0.0.1\n\
         ContactInfo ron-transport-tests@example.invalid\n\
         SocksPort 0\n\
         ORPort {or}\n\
         DirPort {dirport}\n\
         Log notice file {dir}/notice.log\n\
         SafeLogging 0\n\
         ShutdownWaitLength 0\n\
         AssumeReachable 1\n\
         PathsNeededToBuildCircuits 0.25\n\
         {votes}\
         TestingDirAuthVoteHSDir *\n\
         TestingMinExitFlagThreshold 0\n\
         V3AuthVotingInterval {vi}\n\
         V3AuthVoteDelay 2\n\
         V3AuthDistDelay 2\n\
         TestingV3AuthInitialVotingInterval 5\n\
         TestingV3AuthInitialVoteDelay 2\n\
         TestingV3AuthInitialDistDelay 2\n\
         {dir_authorities}",
        dir = n.dir.display(),
        name = n.name,
        or = n.or_port,
        dirport = n.dir_port,
        vi = VOTING_INTERVAL_SECS,
    );
    if n.authority {
        t.push_str("AuthoritativeDirectory 1\nV3AuthoritativeDirectory 1\nExitPolicy reject *:*\n");
    } else if n.exit {
        // Clients on microdescriptors see a policy summary without private-address rules, so
        // the echo port is also accepted on every address (harmless: the namespace has no
        // route anywhere but lo).
        write!(
            t,
            "ExitRelay 1\nExitPolicyRejectPrivate 0\nExitPolicyRejectLocalInterfaces 0\n\
             ExitPolicy accept 127.0.0.0/8:*\nExitPolicy accept *:{echo_port}-{last}\n\
             ExitPolicy reject *:*\n",
            last = echo_port + 9
        )
        .expect("write");
    } else {
        t.push_str("ExitRelay 0\nExitPolicy reject *:*\n");
    }
    t
}
