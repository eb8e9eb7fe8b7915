//! The benchmark's pictures: each section records what it measured here, and the run ends
//! by drawing SVG charts into `benches/charts/` (kept in the repository, shown by
//! BENCHMARKS.md), with plotters' SVG backend (no fonts or system libraries needed).
//!
//! - `throughput-<backend>.svg`: pairs/s against tasks for dlock, its floor and its peer;
//! - `handoff-<backend>.svg`: the distribution of handoff latencies (sorted samples: the
//!   share of handoffs faster than x) for dlock and its peer, per waiting time;
//! - `hot-key-shares.svg`: each task's share of the hot key's acquisitions, dlock beside
//!   rslock, sorted (a fair split is a flat line at 100 % / tasks).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use plotters::prelude::*;

#[derive(Default)]
struct Recorded {
    /// backend → series → (tasks, pairs/s)
    throughput: BTreeMap<String, BTreeMap<String, Vec<(usize, f64)>>>,
    /// backend → series ("dlock, 50 ms wait") → sorted latencies
    handoff: BTreeMap<String, BTreeMap<String, Vec<Duration>>>,
    /// series ("dlock", "rslock 0.10") → acquisitions per task of the hot key
    shares: BTreeMap<String, Vec<u64>>,
}

static RECORDED: Mutex<Option<Recorded>> = Mutex::new(None);

fn record(f: impl FnOnce(&mut Recorded)) {
    let mut recorded = RECORDED.lock().unwrap_or_else(|e| e.into_inner());
    f(recorded.get_or_insert_with(Recorded::default));
}

pub fn throughput(backend: &str, series: &str, tasks: usize, rate: f64) {
    record(|r| {
        let points = r.throughput.entry(backend.into()).or_default();
        points.entry(series.into()).or_default().push((tasks, rate));
    });
}

pub fn handoff(backend: &str, series: &str, sorted: &[Duration]) {
    record(|r| {
        let series_map = r.handoff.entry(backend.into()).or_default();
        series_map.insert(series.into(), sorted.to_vec());
    });
}

pub fn shares(series: &str, per_task: &[u64]) {
    record(|r| {
        r.shares.insert(series.into(), per_task.to_vec());
    });
}

/// Draws every chart something was recorded for into `dir`; prints the files written.
pub fn write(dir: &Path) {
    let recorded = RECORDED.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(recorded) = recorded else {
        return;
    };
    std::fs::create_dir_all(dir).expect("chart directory");
    let mut written = Vec::new();
    // "redis (no pub/sub: polls)" → "redis-no-pub-sub-polls": a file name on every system.
    let file_name = |kind: &str, backend: &str| {
        let words: Vec<&str> = backend
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect();
        format!("{kind}-{}.svg", words.join("-"))
    };
    for (backend, series) in &recorded.throughput {
        let file = dir.join(file_name("throughput", backend));
        draw_throughput(&file, backend, series).expect("throughput chart");
        written.push(file);
    }
    for (backend, series) in &recorded.handoff {
        let file = dir.join(file_name("handoff", backend));
        draw_handoff(&file, backend, series).expect("handoff chart");
        written.push(file);
    }
    if !recorded.shares.is_empty() {
        let file = dir.join("hot-key-shares.svg");
        draw_shares(&file, &recorded.shares).expect("shares chart");
        written.push(file);
    }
    println!("\nCharts:");
    for file in written {
        println!("- {}", file.display());
    }
}

type Drawn = Result<(), Box<dyn std::error::Error>>;

fn draw_throughput(
    file: &Path,
    backend: &str,
    series: &BTreeMap<String, Vec<(usize, f64)>>,
) -> Drawn {
    let root = SVGBackend::new(file, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_tasks = series.values().flatten().map(|p| p.0).max().unwrap_or(1) as f64;
    let max_rate = series.values().flatten().map(|p| p.1).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{backend}: lock + release pairs/s, distinct keys"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1f64..max_tasks).log_scale(), 0f64..max_rate * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("tasks")
        .y_desc("pairs/s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut points: Vec<(f64, f64)> = points.iter().map(|&(t, r)| (t as f64, r)).collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn draw_handoff(file: &Path, backend: &str, series: &BTreeMap<String, Vec<Duration>>) -> Drawn {
    let root = SVGBackend::new(file, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let millis = |d: &Duration| d.as_secs_f64() * 1e3;
    let slowest = series.values().flatten().map(millis).fold(0.1, f64::max);
    let fastest = series
        .values()
        .flatten()
        .map(millis)
        .fold(slowest, f64::min)
        .max(0.01);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{backend}: handoff latency to a blocked waiter"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((fastest * 0.8..slowest * 1.25).log_scale(), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("ms from the release call to the waiter's lock() returning (log)")
        .y_desc("% of handoffs at most")
        .x_label_formatter(&|x| format!("{x:.2}"))
        .draw()?;
    for (i, (name, sorted)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let n = sorted.len().max(1) as f64;
        let points: Vec<(f64, f64)> = sorted
            .iter()
            .enumerate()
            .map(|(k, d)| (millis(d), (k + 1) as f64 * 100.0 / n))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn draw_shares(file: &Path, series: &BTreeMap<String, Vec<u64>>) -> Drawn {
    let root = SVGBackend::new(file, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let share_lists: Vec<(&String, Vec<f64>)> = series
        .iter()
        .map(|(name, per_task)| {
            let total = per_task.iter().sum::<u64>().max(1) as f64;
            let mut shares: Vec<f64> = per_task.iter().map(|&n| n as f64 * 100.0 / total).collect();
            shares.sort_by(f64::total_cmp);
            (name, shares)
        })
        .collect();
    let tasks = share_lists.iter().map(|(_, s)| s.len()).max().unwrap_or(1);
    let top = share_lists
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "hot key: each task's share of the acquisitions (sorted)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..tasks as f64, 0f64..top * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("tasks, from the fewest acquisitions to the most")
        .y_desc("% of all acquisitions")
        .draw()?;
    for (i, (name, shares)) in share_lists.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = shares
            .into_iter()
            .enumerate()
            .map(|(k, s)| (k as f64 + 0.5, s))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    let fair = 100.0 / tasks as f64;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, fair), (tasks as f64, fair)],
            BLACK.mix(0.4),
        ))?
        .label("fair share")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
