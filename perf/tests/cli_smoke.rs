//! Smoke runs of the `ron-perf` binary's abuse scenario and soak with tiny counts (tokio
//! engine over TCP only, so they run without io_uring): the machinery runs end to end and the
//! report carries the fields other tools read. Nothing here measures or asserts performance.

use std::process::Command;

fn ron_perf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ron-perf"))
}

fn read_json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn abuse_scenario_runs_every_attack_and_counts_server_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("abuse.json");
    let out = ron_perf()
        .args([
            "--scenarios",
            "abuse",
            "--engines",
            "tokio",
            "--transports",
            "tcp",
            "--abuse-tiny",
            "--server-cores",
            "",
            "--client-cores",
            "",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ron-perf failed:\n{stderr}");
    let v = read_json(&json);
    let rows = v["abuse"]["rows"].as_array().expect("abuse.rows");
    let attacks: Vec<&str> = rows.iter().map(|r| r["attack"].as_str().unwrap()).collect();
    assert_eq!(
        attacks,
        ["slowloris", "hot_peer", "non_reader", "handshake_flood"],
        "{stderr}"
    );
    for r in rows {
        assert_eq!(r["engine"], "tokio");
        assert_eq!(r["transport"], "tcp");
        assert!(r["good_fraction"].is_number(), "{r}");
        assert!(r["good_fps_baseline"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["attack_opened"].as_u64().unwrap() >= 1, "{r}");
        assert!(r["rejected"].is_object(), "server metrics not scraped: {r}");
    }
    // A length prefix above max_frame_bytes is refused before any allocation, with the
    // canonical reason, and the connection is closed.
    let flood = &rows[3];
    assert!(
        flood["rejected"]["too_large"].as_u64().unwrap_or(0) >= 1,
        "{flood}"
    );
    assert!(
        flood["attack_closed_by_server"].as_u64().unwrap() >= 1,
        "{flood}"
    );
    assert!(dir.path().join("abuse.abuse.svg").exists());
}

#[test]
fn soak_samples_rss_and_fds_into_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    let out = ron_perf()
        .args([
            "soak",
            "--duration",
            "4s",
            "--sample-every",
            "1s",
            "--rate",
            "200",
            "--churn",
            "5",
            "--engines",
            "tokio",
            "--transports",
            "tcp",
            "--server-cores",
            "",
            "--client-cores",
            "",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ron-perf soak failed:\n{stderr}");
    let v = read_json(&json);
    let servers = v["soak"]["servers"].as_array().expect("soak.servers");
    assert_eq!(servers.len(), 1);
    let s = &servers[0];
    let samples = s["samples"].as_array().unwrap();
    // The baseline plus one per second of load.
    assert!(samples.len() >= 4, "{s}");
    for x in samples {
        assert!(
            x["t_s"].is_number() && x["rss_bytes"].as_u64().unwrap() > 0,
            "{x}"
        );
        assert!(x["open_fds"].as_u64().unwrap() > 0, "{x}");
    }
    assert!(s["summary"]["fds_end"].is_u64(), "{s}");
    assert!(
        s["summary"]["rss_second_half_mean_bytes"].is_number(),
        "{s}"
    );
    assert!(s["load"]["churn_cycles"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["load"]["small_frames"].as_u64().unwrap() >= 1, "{s}");
    assert!(dir.path().join("soak.svg").exists());
}
