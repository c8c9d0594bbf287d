//! Size and duration units (spec/CONFIG.md §3): exact examples, rejection of garbage, and the
//! §11 "durations/sizes proptest" row: format → parse is the identity, parse → format → parse
//! is stable, and values stay within the accepted ranges.

use std::time::Duration;

use proptest::prelude::*;
use ron_transport::config::{
    format_duration, format_size, parse_duration, parse_size, Config, ConfigError,
};

#[test]
fn config_format_picks_the_largest_exact_unit() {
    assert_eq!(format_size(65536), "64KiB");
    assert_eq!(format_size(1024 * 1024), "1MiB");
    assert_eq!(format_size(3 * 1024 * 1024 + 1024), "3073KiB");
    assert_eq!(format_size(1025), "1025B");
    assert_eq!(format_duration(Duration::from_secs(5)), "5s");
    assert_eq!(format_duration(Duration::from_secs(60)), "1m");
    assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    assert_eq!(format_duration(Duration::from_secs(61)), "61s");
    assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
}

#[test]
fn config_spec_units_parse() {
    assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
    assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
    assert_eq!(parse_size("7B").unwrap(), 7);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(parse_duration("750ms").unwrap(), Duration::from_millis(750));
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
}

#[test]
fn config_garbage_negative_and_overflow_are_parse_errors_naming_the_key() {
    for (toml, key) in [
        ("read_timeout = \"-5s\"", "read_timeout"),
        ("read_timeout = \"5\"", "read_timeout"),
        ("idle_timeout = \"1.5s\"", "idle_timeout"),
        ("write_timeout = \"5 fortnights\"", "write_timeout"),
        ("[limits]\nchunk_bytes = \"64KB\"", "limits.chunk_bytes"),
        ("[limits]\nchunk_bytes = -4096", "limits.chunk_bytes"),
        (
            "[limits]\nmax_frame_bytes = \"99999999999999999999MiB\"",
            "limits.max_frame_bytes",
        ),
        (
            "[rates]\nper_peer_bytes_per_sec = \"17592186044416MiB\"",
            "rates.per_peer_bytes_per_sec",
        ),
        (
            "[arti]\nbootstrap_timeout = \"999999999999999999999999999999999999h\"",
            "arti.bootstrap_timeout",
        ),
    ] {
        match Config::from_toml_str(toml) {
            Err(ConfigError::Parse { key: k, .. }) => assert_eq!(k, key, "{toml}"),
            other => panic!("{toml}: expected a parse error naming {key}, got {other:?}"),
        }
    }
}

fn any_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u64..=(u64::MAX >> 20)).prop_map(|n| n << 20),
        (0u64..=(u64::MAX >> 10)).prop_map(|n| n << 10),
        0u64..=2 * 1024 * 1024,
    ]
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..1_000_000).prop_map(Duration::from_millis),
        (0u64..100_000).prop_map(Duration::from_secs),
        (0u64..10_000).prop_map(|h| Duration::from_secs(h * 3600)),
    ]
}

proptest! {
    #[test]
    fn config_sizes_round_trip(n in any_size()) {
        let text = format_size(n);
        prop_assert_eq!(parse_size(&text), Ok(n));
        // The unit is the largest that divides exactly.
        if n != 0 && n % (1 << 20) == 0 { prop_assert!(text.ends_with("MiB")); }
        else if n != 0 && n % 1024 == 0 { prop_assert!(text.ends_with("KiB")); }
        else { prop_assert!(text.ends_with('B')); }
    }

    #[test]
    fn config_durations_round_trip(d in any_duration()) {
        let text = format_duration(d);
        prop_assert_eq!(parse_duration(&text), Ok(d));
    }

    #[test]
    fn config_parse_then_format_is_stable(n in 0u64..1_000_000_000, unit in prop::sample::select(vec!["B", "KiB", "MiB", ""])) {
        let text = format!("{n}{unit}");
        let v = parse_size(&text).unwrap();
        prop_assert_eq!(parse_size(&format_size(v)), Ok(v));
    }

    #[test]
    fn config_duration_parse_then_format_is_stable(n in 0u64..1_000_000_000, unit in prop::sample::select(vec!["ms", "s", "m", "h"])) {
        let d = parse_duration(&format!("{n}{unit}")).unwrap();
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }

    #[test]
    fn config_arbitrary_text_never_panics(s in ".{0,40}") {
        let _ = parse_size(&s);
        let _ = parse_duration(&s);
    }

    /// Sizes accepted for `limits.*` through a file stay in range after a format/parse trip.
    #[test]
    fn config_frame_and_chunk_stay_in_accepted_ranges(frame in 65536u64..=1048576, chunk in 4096u64..=262144) {
        let chunk = chunk.min(frame);
        let toml = format!("[limits]\nmax_frame_bytes = \"{}\"\nchunk_bytes = \"{}\"", format_size(frame), format_size(chunk));
        let cfg = Config::from_toml_str(&toml).unwrap();
        prop_assert_eq!(cfg.max_frame_bytes, frame);
        prop_assert_eq!(cfg.chunk_bytes, chunk);
        prop_assert!(cfg.validate().is_ok());
    }
}
