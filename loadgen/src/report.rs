//! `results.json`, `results.md` and the SVG charts.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context as _;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::Serialize;

use crate::workload::RunResult;

/// A broker that did not answer, and how to start it.
#[derive(Debug, Clone, Serialize)]
pub struct Unreachable {
    pub target: String,
    pub address: String,
    pub error: String,
    pub how_to_start: String,
}

/// How and where the numbers were made.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub command: String,
    pub loadgen_version: &'static str,
    pub git_commit: String,
    pub started_utc: String,
    pub host: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub notes: Vec<String>,
}

impl Meta {
    pub fn collect(notes: Vec<String>) -> Self {
        let read = |p: &str| {
            fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or(0.0, |kib| (kib / 1048576.0 * 10.0).round() / 10.0);
        let git_commit = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        Self {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            loadgen_version: env!("CARGO_PKG_VERSION"),
            git_commit,
            started_utc: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string(),
            host: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib,
            notes,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub runs: Vec<RunResult>,
    pub unreachable: Vec<Unreachable>,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The Markdown table of every run.
pub fn table(runs: &[RunResult]) -> String {
    let mut s = String::from(
        "| experiment | target | mode | msgs/s | MB/s | p50 ms | p99 ms | p99.9 ms | max ms | client CPU s | broker CPU s | messages | verified |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in runs {
        let (p50, p99, p999, max) = r.latency.as_ref().map_or_else(
            || ("-".into(), "-".into(), "-".into(), "-".into()),
            |l| (ms(l.p50_us), ms(l.p99_us), ms(l.p999_us), ms(l.max_us)),
        );
        let v = &r.verify;
        let verified = if !v.consumed {
            format!("{} acked, not read back", v.acknowledged)
        } else if r.is_clean() {
            format!("all {} read back once", v.unique)
        } else {
            format!(
                "{} missing, {} duplicated, {} of {} acked",
                v.missing, v.duplicates, v.acknowledged, v.sent
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:?} | {:.0} | {:.1} | {p50} | {p99} | {p999} | {max} | {:.2} | {} | {} | {verified} |",
            r.experiment,
            r.target,
            r.mode,
            r.msgs_per_sec,
            r.mb_per_sec,
            r.client_cpu_s,
            r.broker_cpu_s.map_or("?".to_string(), |c| format!("{c:.2}")),
            r.messages,
        )
        .map_err(|_| ());
    }
    s
}

pub fn markdown(report: &Report) -> String {
    let m = &report.meta;
    let mut s = String::from("# loadgen results\n\n");
    let _ = writeln!(s, "- command: `{}`", m.command);
    let _ = writeln!(
        s,
        "- commit {}, loadgen {}, started {}",
        m.git_commit, m.loadgen_version, m.started_utc
    );
    let _ = writeln!(
        s,
        "- machine: {} ({} CPUs, {} GiB), kernel {}, host {}",
        m.cpu_model, m.cpus, m.memory_gib, m.kernel, m.host
    );
    let mut clients: Vec<String> = report
        .runs
        .iter()
        .map(|r| format!("{}: {} at {}", r.target, r.client, r.address))
        .collect();
    clients.dedup();
    for c in clients {
        let _ = writeln!(s, "- {c}");
    }
    for n in &m.notes {
        let _ = writeln!(s, "- {n}");
    }
    s.push('\n');
    s.push_str(&table(&report.runs));
    s.push_str(
        "\nMB/s counts payload bytes (10^6 bytes per MB). Latency is end to end (send to receive), \
         measured from each message's scheduled send time, so it includes time queued behind a stall. \
         CPU is user+system seconds over the measured window, for loadgen and for the process \
         listening on the broker's port. A consumer's window opens when the last warm-up message \
         (without a warm-up, the first message) arrives, so `messages` counts the ones after it; \
         `verified` counts every message read back.\n",
    );
    for u in &report.unreachable {
        let _ = writeln!(
            s,
            "\n**{} not measured** at {}: {}. To start it: `{}`.",
            u.target, u.address, u.error, u.how_to_start
        );
    }
    s
}

/// Throughput over the run: (messages done, msgs/s) points, averaged over windows of
/// 1/50 of the run, and at least 20 ms (two progress samples). The run ends, for the
/// chart, at the first sample that holds its final count: what follows is shutdown
/// (closing a consumer, waiting for the broker's count), not throughput.
pub fn rate_points(series: &[(f64, u64)]) -> Vec<(f64, f64)> {
    let Some(&(_, n_end)) = series.last() else {
        return Vec::new();
    };
    let last = series
        .iter()
        .position(|&(_, n)| n >= n_end)
        .unwrap_or(series.len() - 1);
    let series = &series[..=last];
    let t_end = series[last].0;
    let window = (t_end / 50.0).max(0.02);
    let mut points = Vec::new();
    let (mut t0, mut n0) = (0.0, 0u64);
    for &(t, n) in series {
        if t - t0 >= window || (t == t_end && t > t0) {
            let rate = (n.saturating_sub(n0)) as f64 / (t - t0);
            points.push(((n0 + n) as f64 / 2.0, rate));
            (t0, n0) = (t, n);
        }
    }
    points
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One colour per target (in order of first appearance, so the same in every chart of a
/// report); a target's second and later runs in a chart are dashed (batch 50 beside
/// batch 1). Returns (colour, dashed) per run.
fn run_styles(runs: &[&RunResult]) -> Vec<(RGBColor, bool)> {
    let mut targets: Vec<&str> = Vec::new();
    runs.iter()
        .map(|r| match targets.iter().position(|t| *t == r.target) {
            Some(i) => (PALETTE[i % PALETTE.len()], true),
            None => {
                targets.push(&r.target);
                (PALETTE[(targets.len() - 1) % PALETTE.len()], false)
            }
        })
        .collect()
}

/// A line chart of throughput against messages done, one line per run, like the paper's
/// producer and consumer figures. The throughput axis is logarithmic: the targets differ
/// by up to 100x, and on a linear axis the slower ones lie flat along the bottom. A window
/// with no progress (a stall) is drawn at the axis' floor.
pub fn throughput_chart(path: &Path, title: &str, runs: &[&RunResult]) -> anyhow::Result<()> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let label = format!(
                "{} {} ({:.0} msgs/s)",
                r.target, r.experiment, r.msgs_per_sec
            );
            let pts = rate_points(&r.series)
                .into_iter()
                .map(|(x, y)| (x / 1e6, y))
                .collect();
            (label, pts)
        })
        .collect();
    let xmax = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(0.0f64, f64::max)
        .max(1e-6)
        * 1.02;
    let ymax = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(10.0)
        * 1.5;
    let ymin = (lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .filter(|y| *y > 0.0)
        .fold(f64::INFINITY, f64::min)
        / 2.0)
        .clamp(1.0, ymax / 10.0);
    let lines: Vec<(String, Vec<(f64, f64)>)> = lines
        .into_iter()
        .map(|(label, pts)| {
            (
                label,
                pts.into_iter().map(|(x, y)| (x, y.max(ymin))).collect(),
            )
        })
        .collect();
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("messages (millions)")
            .y_desc("throughput (messages/s, log scale)")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for ((label, pts), (color, dashed)) in lines.iter().zip(run_styles(runs)) {
            let style = color.stroke_width(2);
            if dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.iter().copied(), 8, 5, style))?
                    .label(label.as_str())
                    .legend(move |(x, y)| {
                        DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 3, style)
                    });
            } else {
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), style))?
                    .label(label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}

/// Latency percentiles per run (log scale), for the fixed-rate experiment.
pub fn latency_chart(path: &Path, title: &str, runs: &[&RunResult]) -> anyhow::Result<()> {
    let names = ["p50", "p90", "p99", "p99.9", "max"];
    let runs: Vec<&RunResult> = runs
        .iter()
        .copied()
        .filter(|r| r.latency.is_some())
        .collect();
    let styles = run_styles(&runs);
    let lines: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .filter_map(|r| {
            let l = r.latency.as_ref()?;
            let values = [l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us];
            let pts = values
                .iter()
                .enumerate()
                .map(|(i, us)| (i as f64, (*us as f64 / 1000.0).max(0.001)))
                .collect();
            Some((format!("{} {}", r.target, r.experiment), pts))
        })
        .collect();
    let ymax = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.01f64, f64::max)
        * 2.0;
    let ymin = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(f64::MAX, f64::min)
        .min(ymax / 10.0)
        / 2.0;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(80)
            .build_cartesian_2d(-0.2f64..4.2f64, (ymin..ymax).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 0.05 && (0.0..5.0).contains(&i) {
                    names[i as usize].to_string()
                } else {
                    String::new()
                }
            })
            .x_desc("percentile")
            .y_desc("end-to-end latency (ms, log scale)")
            .draw()?;
        for ((label, pts), &(color, _)) in lines.iter().zip(&styles) {
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
                .label(label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}

/// Writes `results.json`, `results.md` and the charts that have data into `dir`.
pub fn write(dir: &Path, report: &Report) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    fs::write(dir.join("results.json"), json)?;
    fs::write(dir.join("results.md"), markdown(report))?;
    let of =
        |w: &str| -> Vec<&RunResult> { report.runs.iter().filter(|r| r.workload == w).collect() };
    let producers = of("produce");
    if !producers.is_empty() {
        throughput_chart(&dir.join("producer.svg"), "Producer throughput", &producers)?;
    }
    let consumers = of("consume");
    if !consumers.is_empty() {
        throughput_chart(
            &dir.join("consumer.svg"),
            "Consumer throughput, draining a backlog",
            &consumers,
        )?;
    }
    let latencies = of("latency");
    if !latencies.is_empty() {
        latency_chart(
            &dir.join("latency.svg"),
            "End-to-end latency at a fixed offered rate",
            &latencies,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::rate_points;

    #[test]
    fn rates_follow_the_series() {
        let series: Vec<(f64, u64)> = (0..=20).map(|i| (i as f64 * 0.1, i * 100)).collect();
        let pts = rate_points(&series);
        assert!(!pts.is_empty());
        for (_, r) in pts {
            assert!((r - 1000.0).abs() < 1.0, "{r}");
        }
        assert!(rate_points(&[]).is_empty());
    }

    #[test]
    fn the_idle_tail_after_the_last_message_is_not_charted() {
        // 1000 msgs/s for 2 s, then 3 s of shutdown with no new messages.
        let mut series: Vec<(f64, u64)> = (0..=20).map(|i| (i as f64 * 0.1, i * 100)).collect();
        series.extend((21..=50).map(|i| (i as f64 * 0.1, 2000)));
        let pts = rate_points(&series);
        assert!(pts.len() >= 10, "{pts:?}");
        for (_, r) in pts {
            assert!((r - 1000.0).abs() < 1.0, "{r}");
        }
    }
}
