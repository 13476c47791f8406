//! `bench-plot SUMMARY.csv OUTDIR`: draws `ratios.png` (ublkd / kernel device per benchmark row,
//! with the issue-5 target marked) and `qd.png` (IOPS against queue depth over the delay filter,
//! with the ideal `in_flight / latency` line) and, with peer servers measured, `peers.png` (each
//! server's ratio per row, side by side) from the `summary.csv` that bench/summarize.py
//! writes.
//!
//! Text is rendered with ab_glyph from a TTF file (fonts-dejavu-core; `BENCH_PLOT_FONT` overrides
//! the path), so neither fontconfig nor freetype is needed.

use std::collections::HashMap;
use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

type Res<T> = Result<T, Box<dyn Error>>;

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Res<()> {
    let path = match std::env::var_os("BENCH_PLOT_FONT") {
        Some(p) => PathBuf::from(p),
        None => FONTS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or("no DejaVuSans.ttf (install fonts-dejavu-core or set BENCH_PLOT_FONT)")?,
    };
    let bytes: &'static [u8] = Box::leak(std::fs::read(&path)?.into_boxed_slice());
    register_font_bytes(bytes).map_err(|_| format!("{}: not a usable font", path.display()))?;
    Ok(())
}

fn register_font_bytes(bytes: &'static [u8]) -> Result<(), ()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| ())
}

/// One row of summary.csv, by column name.
struct Row(HashMap<String, String>);

impl Row {
    fn s(&self, k: &str) -> &str {
        self.0.get(k).map(String::as_str).unwrap_or("")
    }
    fn f(&self, k: &str) -> Option<f64> {
        self.s(k).parse().ok()
    }
}

fn read_csv(path: &Path) -> Res<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines();
    let head: Vec<String> = lines
        .next()
        .ok_or("empty CSV")?
        .split(',')
        .map(str::to_owned)
        .collect();
    Ok(lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            Row(head
                .iter()
                .cloned()
                .zip(l.split(',').map(str::to_owned))
                .collect())
        })
        .collect())
}

fn group_color(g: &str) -> RGBColor {
    match g {
        "null" => RGBColor(31, 119, 180),
        "file" => RGBColor(44, 160, 44),
        "qcow2" => RGBColor(148, 103, 189),
        "qcow2-empty" => RGBColor(140, 86, 75),
        _ => RGBColor(255, 127, 14),
    }
}

fn short_rw(rw: &str) -> &str {
    match rw {
        "randread" => "rread",
        "randwrite" => "rwrite",
        x => x,
    }
}

/// A benchmark row's label: "null rread qd64 j2".
fn row_label(r: &Row) -> String {
    format!(
        "{} {} qd{} j{}",
        r.s("group"),
        short_rw(r.s("rw")),
        r.s("iodepth"),
        r.s("numjobs")
    )
}

/// Horizontal bars: one per row, ratio to the kernel device, target as a red tick.
fn draw_ratios(rows: &[&Row], area: &DrawingArea<BitMapBackend<'_>, Shift>) -> Res<()> {
    area.fill(&WHITE)?;
    let n = rows.len() as i32;
    let max = rows
        .iter()
        .filter_map(|r| r.f("ratio"))
        .fold(1.0f64, f64::max)
        * 1.1;
    let labels: Vec<String> = rows.iter().map(|r| row_label(r)).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(
            "ublkd / kernel device (null: null_blk, file: loop dio, mem: null_blk)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(160)
        .build_cartesian_2d(0f64..max, (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n as usize)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i >= 0 && *i < n => labels[*i as usize].clone(),
            _ => String::new(),
        })
        .x_desc("ratio (higher is better; red tick = issue-5 target)")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let i = i as i32;
        let c = group_color(r.s("group"));
        if let Some(ratio) = r.f("ratio") {
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(i)),
                    (ratio, SegmentValue::Exact(i + 1)),
                ],
                c.filled(),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("{ratio:.2}"),
                (ratio + max * 0.01, SegmentValue::CenterOf(i)),
                ("sans-serif", 13).into_font(),
            )))?;
        }
        if let Some(t) = r.f("target") {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(t, SegmentValue::Exact(i)), (t, SegmentValue::Exact(i + 1))],
                RED.stroke_width(3),
            )))?;
        }
    }
    Ok(())
}

fn peer_color(device: &str) -> RGBColor {
    match device {
        d if d.ends_with("@base") => RGBColor(150, 150, 150),
        d if d.contains('~') => RGBColor(44, 160, 44),
        d if d.starts_with("ublk-") => RGBColor(31, 119, 180),
        d if d.ends_with("-z") => RGBColor(214, 39, 40),
        _ => RGBColor(255, 127, 14),
    }
}

/// The legend name of a device: the server (and mode) it stands for, whatever its target.
fn peer_name(device: &str) -> String {
    match device {
        d if d.ends_with("@base") => "ublkd (baseline build)".into(),
        d if d.contains('~') => format!("ublkd {}", d.rsplit('~').next().unwrap_or("")),
        d if d.starts_with("ublk-") => "ublkd".into(),
        d if d.ends_with("-z") => "rublk -z (zero copy)".into(),
        _ => "rublk (copy)".into(),
    }
}

/// Side by side with the peer server: per benchmark row one bar per server, ratio to the kernel
/// device of that group.
fn draw_peers(rows: &[&Row], area: &DrawingArea<BitMapBackend<'_>, Shift>) -> Res<()> {
    area.fill(&WHITE)?;
    // Row labels in first-seen order, servers in first-seen order.
    let mut labels: Vec<String> = Vec::new();
    let mut devices: Vec<&str> = Vec::new();
    for r in rows {
        let l = row_label(r);
        if !labels.contains(&l) {
            labels.push(l);
        }
        let d = r.s("device");
        if !devices.iter().any(|x| peer_name(x) == peer_name(d)) {
            devices.push(d);
        }
    }
    let per = devices.len().max(1) as i32;
    let n = labels.len() as i32 * per;
    let max = rows
        .iter()
        .filter_map(|r| r.f("ratio"))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "ublk servers / kernel device, same boot (null: null_blk, file: loop dio)",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(160)
        .build_cartesian_2d(0f64..max, (0..n).into_segmented())?;
    let labels_ref = &labels;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n as usize)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i >= 0 && *i < n && i % per == per / 2 => {
                labels_ref[(*i / per) as usize].clone()
            }
            _ => String::new(),
        })
        .x_desc("ratio to the kernel device (higher is better)")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for (k, d) in devices.iter().enumerate() {
        let c = peer_color(d);
        let bars: Vec<(i32, f64)> = rows
            .iter()
            .filter(|r| peer_name(r.s("device")) == peer_name(d))
            .filter_map(|r| {
                let l = row_label(r);
                let row = labels.iter().position(|x| *x == l)? as i32;
                Some((row * per + k as i32, r.f("ratio")?))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|&(i, ratio)| {
                Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (ratio, SegmentValue::Exact(i + 1)),
                    ],
                    c.filled(),
                )
            }))?
            .label(peer_name(d))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], c.filled()));
        chart.draw_series(bars.iter().map(|&(i, ratio)| {
            Text::new(
                format!("{ratio:.2}"),
                (ratio + max * 0.01, SegmentValue::CenterOf(i)),
                ("sans-serif", 12).into_font(),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

/// IOPS against iodepth (log-log), measured and ideal.
fn draw_qd(rows: &[&Row], area: &DrawingArea<BitMapBackend<'_>, Shift>) -> Res<()> {
    area.fill(&WHITE)?;
    let pts: Vec<(f64, f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.f("iodepth")?, r.f("median_iops")?, r.f("ideal_iops")?)))
        .collect();
    // The ideal at the latency measured at the lowest depth (timer slack included), if known.
    let eff: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.f("iodepth")?, r.f("ideal_eff_iops")?)))
        .collect();
    let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max) * 2.5;
    let ymax = pts.iter().map(|p| p.1.max(p.2)).fold(10.0, f64::max) * 2.0;
    let ymin = pts
        .iter()
        .map(|p| p.1.min(p.2))
        .fold(f64::MAX, f64::min)
        .max(1.0)
        / 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "ublkd null + delay 5 ms (1 queue, depth 4096): IOPS vs iodepth, % of 5 ms ideal",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((0.8f64..xmax).log_scale(), (ymin..ymax).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("fio iodepth (requests in flight)")
        .y_desc("IOPS")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.2)),
            BLACK.stroke_width(2),
        ))?
        .label("ideal: in_flight / 5 ms")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    if !eff.is_empty() {
        let grey = RGBColor(150, 150, 150);
        chart
            .draw_series(LineSeries::new(eff.iter().copied(), grey.stroke_width(2)))?
            .label("ideal at the latency measured at iodepth 1")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
            });
    }
    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.1)),
            blue.stroke_width(3),
        ))?
        .label("measured (median)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(3)));
    chart.draw_series(
        pts.iter()
            .map(|p| Circle::new((p.0, p.1), 5, blue.filled())),
    )?;
    chart.draw_series(pts.iter().map(|p| {
        Text::new(
            format!("{:.1}%", 100.0 * p.1 / p.2),
            (p.0 * 1.08, p.1 * 0.72),
            ("sans-serif", 13).into_font(),
        )
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

fn run() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [csv, out] = args.as_slice() else {
        return Err("usage: bench-plot SUMMARY.csv OUTDIR".into());
    };
    register_font()?;
    let rows = read_csv(Path::new(csv))?;
    let out = Path::new(out);
    let ratios: Vec<&Row> = rows.iter().filter(|r| r.s("kind") == "ratio").collect();
    if !ratios.is_empty() {
        let p = out.join("ratios.png");
        let h = 120 + 28 * ratios.len() as u32;
        let area = BitMapBackend::new(&p, (1100, h)).into_drawing_area();
        draw_ratios(&ratios, &area)?;
        area.present()?;
        println!("{}", p.display());
    }
    let peers: Vec<&Row> = rows.iter().filter(|r| r.s("kind") == "peer").collect();
    if !peers.is_empty() {
        let p = out.join("peers.png");
        let h = 140 + 16 * peers.len() as u32;
        let area = BitMapBackend::new(&p, (1100, h)).into_drawing_area();
        draw_peers(&peers, &area)?;
        area.present()?;
        println!("{}", p.display());
    }
    let qd: Vec<&Row> = rows.iter().filter(|r| r.s("kind") == "qd").collect();
    if !qd.is_empty() {
        let p = out.join("qd.png");
        let area = BitMapBackend::new(&p, (1000, 650)).into_drawing_area();
        draw_qd(&qd, &area)?;
        area.present()?;
        println!("{}", p.display());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-plot: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
