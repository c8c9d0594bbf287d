//! SVG chart of a report (plotters): for every measurement shape, throughput and p99 latency
//! per engine, each relative to the hand-written `tokio-framed` server of the same shape
//! (1.0 = tokio-framed; ron-transport's `tokio` engine when tokio-framed did not run, else the
//! first engine of the shape).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::{Report, Row};

/// Per engine: (throughput, p99 µs) of one shape.
type ByEngine = BTreeMap<&'static str, (Option<f64>, Option<f64>)>;

const ENGINES: [&str; 7] = [
    "tokio-framed",
    "tokio",
    "uring",
    "uring-raw",
    "monoio",
    "tokio-uring",
    "bare-uring",
];

/// The engines the ratios are taken against, in order of preference.
const BASELINES: [&str; 2] = ["tokio-framed", "tokio"];

/// Bar `ei` of group `gi` (groups one unit wide, bars `w` wide), from 0 up to `v`.
pub fn group_bar(gi: usize, ei: usize, w: f64, v: f64, color: RGBAColor) -> Rectangle<(f64, f64)> {
    let x0 = gi as f64 + 0.1 + ei as f64 * w;
    Rectangle::new([(x0, 0.0), (x0 + w * 0.9, v)], color.filled())
}

/// The legend swatch of a series drawn in `color`.
pub fn legend_box(color: RGBAColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
}

fn short(r: &Row) -> String {
    let p = r
        .payload
        .map_or(String::new(), |p| format!(" {}K", p / 1024));
    let d = r.depth.map_or(String::new(), |d| format!(" d{d}"));
    let x = match (r.resumed, r.offered_rate.is_some()) {
        (Some(true), _) => " res",
        (Some(false), _) => " cold",
        (None, true) => " rate",
        _ => "",
    };
    format!("{} {}{p}{d}{x}", r.scenario, r.transport)
}

/// Writes the chart to `path`.
pub fn write_svg(rep: &Report, path: &Path) -> anyhow::Result<()> {
    // shape → engine → (throughput, p99)
    let mut groups: Vec<(String, ByEngine)> = Vec::new();
    for r in &rep.results {
        let g = short(r);
        let idx = match groups.iter().position(|(k, _)| *k == g) {
            Some(i) => i,
            None => {
                groups.push((g, BTreeMap::new()));
                groups.len() - 1
            }
        };
        let thr = r.handshakes_per_sec.or(r.frames_per_sec);
        if let Some(e) = ENGINES.iter().find(|e| **e == r.engine) {
            groups[idx].1.insert(e, (thr, r.p99_us));
        }
    }
    if groups.is_empty() {
        return Err(anyhow!("report has no rows to chart"));
    }
    let rel = |m: &BTreeMap<&str, (Option<f64>, Option<f64>)>,
               which: usize,
               bases: &[&str]|
     -> BTreeMap<&'static str, f64> {
        let pick = |v: &(Option<f64>, Option<f64>)| if which == 0 { v.0 } else { v.1 };
        let base = bases
            .iter()
            .find_map(|b| m.get(b).and_then(pick))
            .or_else(|| {
                ENGINES
                    .iter()
                    .filter_map(|e| m.get(e).and_then(pick))
                    .next()
            });
        let mut out = BTreeMap::new();
        for e in ENGINES {
            if let (Some(v), Some(b)) = (m.get(e).and_then(pick), base) {
                if b > 0.0 {
                    out.insert(e, v / b);
                }
            }
        }
        out
    };
    let n = groups.len();
    let width = (160 + n * 90).max(900) as u32;
    let root = SVGBackend::new(path, (width, 1350)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let (top, rest) = root.split_vertically(450);
    let (middle, bottom) = rest.split_vertically(450);
    let by_tokio: [&str; 1] = ["tokio"];
    for (area, which, bases, title, ydesc) in [
        (
            &top,
            0usize,
            &BASELINES[..],
            "throughput relative to tokio-framed (higher is better)",
            "× tokio-framed",
        ),
        (
            &middle,
            0usize,
            &by_tokio[..],
            "throughput relative to ron-transport's tokio engine (higher is better)",
            "× tokio",
        ),
        (
            &bottom,
            1usize,
            &BASELINES[..],
            "p99 latency relative to tokio-framed (lower is better)",
            "× tokio-framed",
        ),
    ] {
        let vals: Vec<BTreeMap<&str, f64>> =
            groups.iter().map(|(_, m)| rel(m, which, bases)).collect();
        let ymax = vals
            .iter()
            .flat_map(|m| m.values().copied())
            .fold(1.0f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "ron-perf {} · {}",
                    &rep.commit[..rep.commit.len().min(10)],
                    title
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(70)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
            .map_err(|e| anyhow!("{e:?}"))?;
        chart
            .configure_mesh()
            .x_labels(0)
            .disable_x_mesh()
            .y_desc(ydesc)
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        // Shape names under each group, in pixel coordinates of the enclosing area.
        for (gi, (g, _)) in groups.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(gi as f64 + 0.1, 0.0));
            let (ox, oy) = area.get_base_pixel();
            area.draw(&Text::new(
                g.clone(),
                (px - ox, py - oy + 6),
                ("sans-serif", 11).into_font().color(&BLACK),
            ))
            .map_err(|e| anyhow!("{e:?}"))?;
        }
        let w = 0.8 / ENGINES.len() as f64;
        for (ei, e) in ENGINES.iter().enumerate() {
            let color = Palette99::pick(ei).to_rgba();
            let bars: Vec<Rectangle<(f64, f64)>> = vals
                .iter()
                .enumerate()
                .filter_map(|(gi, m)| {
                    let v = *m.get(e)?;
                    Some(group_bar(gi, ei, w, v, color))
                })
                .collect();
            if bars.is_empty() {
                continue;
            }
            chart
                .draw_series(bars)
                .map_err(|e| anyhow!("{e:?}"))?
                .label(*e)
                .legend(legend_box(color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Limits, Machine};

    #[test]
    fn writes_an_svg_with_every_engine_in_the_legend() {
        let mk = |e: &str, f: f64| Row {
            scenario: "small".into(),
            transport: "tcp".into(),
            engine: e.into(),
            conns: 64,
            payload: Some(1024),
            depth: Some(1),
            frames_per_sec: Some(f),
            p99_us: Some(1e7 / f),
            ..Row::default()
        };
        let rep = Report {
            commit: "abc".into(),
            date: "d".into(),
            machine: Machine {
                cpus: 2,
                kernel: "k".into(),
            },
            limits: Limits::default(),
            results: vec![
                mk("tokio-framed", 1200.0),
                mk("tokio", 1000.0),
                mk("monoio", 1500.0),
                mk("bare-uring", 2000.0),
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        write_svg(&rep, &p).unwrap();
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.starts_with("<svg"));
        for e in [
            "tokio-framed",
            "tokio",
            "monoio",
            "bare-uring",
            "small tcp 1K d1",
        ] {
            assert!(s.contains(e), "missing {e}");
        }
    }
}
