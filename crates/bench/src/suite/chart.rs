//! `latest.svg`: every row's ratio as a horizontal bar on a log scale, drawn from the 1x line
//! (marked) to the ratio: pop3d against Dovecot for S1 .. S5 (green where pop3d is better,
//! red where it is worse), each S6 shape against one node on SQLite (blue). Drawn with
//! `plotters`' SVG backend alone: text becomes SVG `<text>` elements, so no font file or
//! font library is read.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::report::{Report, Row};

/// One bar: its label and ratio (above 1: better than the reference).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub ratio: f64,
    /// An S6 shape against one node on SQLite, not pop3d against Dovecot.
    pub shape: bool,
}

/// pop3d better than Dovecot.
const BETTER: RGBColor = RGBColor(46, 139, 87);
/// pop3d worse than Dovecot.
const WORSE: RGBColor = RGBColor(200, 60, 60);
/// An S6 shape against one node on SQLite.
const SHAPE: RGBColor = RGBColor(70, 110, 200);

/// The bars of `report`: one per S1 .. S5 row that has a ratio, one per S6 shape after the
/// first (the reference) that has one.
pub fn bars(report: &Report) -> Vec<Bar> {
    let mut bars = Vec::new();
    for row in &report.rows {
        if row.id == "S6" {
            for (i, c) in row.cells.iter().enumerate().skip(1) {
                if let Some(ratio) = row.shape_ratio(i) {
                    bars.push(Bar {
                        label: format!("S6 {} {}", short(&row.title), c.server),
                        ratio,
                        shape: true,
                    });
                }
            }
        } else if let Some(ratio) = row.advantage() {
            bars.push(Bar {
                label: label(row),
                ratio,
                shape: false,
            });
        }
    }
    bars
}

fn label(row: &Row) -> String {
    format!(
        "{} {} ({}, c={})",
        row.id,
        short(&row.title),
        row.transport,
        row.concurrency
    )
}

/// A title cut to about 40 characters, at a character boundary.
fn short(title: &str) -> String {
    const MAX: usize = 40;
    match title.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", title[..cut].trim_end()),
        None => title.to_string(),
    }
}

/// The chart of `bars` as an SVG document, titled `caption`.
pub fn svg(bars: &[Bar], caption: &str) -> Result<String, String> {
    let mut out = String::new();
    let n = i32::try_from(bars.len()).map_err(|e| e.to_string())?;
    let height = 90 + 24 * bars.len().max(1) as u32;
    {
        let root = SVGBackend::with_string(&mut out, (1100, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (lo, hi) = bars.iter().fold((0.5f64, 2.0f64), |(lo, hi), b| {
            (lo.min(b.ratio), hi.max(b.ratio))
        });
        let x = (lo / 1.5).max(1e-3)..(hi * 1.5);
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(430)
            .build_cartesian_2d(x.log_scale(), (0..n.max(1)).into_segmented())
            .map_err(|e| e.to_string())?;
        let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(bars.len().max(1))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => usize::try_from(*i)
                    .ok()
                    .and_then(|i| labels.get(i))
                    .map_or_else(String::new, |l| (*l).to_string()),
                _ => String::new(),
            })
            .x_desc("ratio (log scale; above 1x: pop3d better than Dovecot, or the shape faster than one node on SQLite)")
            .x_label_formatter(&|v| format!("{v:.2}x"))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().zip(0..).map(|(b, i)| {
                let colour = match (b.shape, b.ratio >= 1.0) {
                    (true, _) => SHAPE,
                    (false, true) => BETTER,
                    (false, false) => WORSE,
                };
                let mut bar = Rectangle::new(
                    [
                        (1.0, SegmentValue::Exact(i)),
                        (b.ratio, SegmentValue::Exact(i + 1)),
                    ],
                    colour.filled(),
                );
                bar.set_margin(4, 4, 0, 0);
                bar
            }))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().zip(0..).map(|(b, i)| {
                Text::new(
                    format!(" {:.2}x", b.ratio),
                    (b.ratio, SegmentValue::CenterOf(i)),
                    ("sans-serif", 12),
                )
            }))
            .map_err(|e| e.to_string())?;
        // The 1x line.
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (1.0, SegmentValue::Exact(0)),
                    (1.0, SegmentValue::Exact(n.max(1))),
                ],
                BLACK.stroke_width(2),
            )))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::RunResult;
    use crate::suite::report::{cell, report_of, Metrics, Rep, Unit};

    fn rep(seconds: f64) -> Rep {
        Rep {
            run: RunResult {
                sessions: 10,
                errors: 0,
                first_error: None,
                messages: 0,
                octets: 0,
                seconds,
                retr_seconds: 0.0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                truncated: false,
            },
            server_cpu_s: 0.1,
            client_cpu_s: None,
            metrics: Metrics::Rates {},
        }
    }

    fn row(id: &'static str, title: &str, servers: &[(&str, f64)]) -> Row {
        Row {
            id,
            title: title.into(),
            transport: "plain",
            concurrency: 16,
            unit: Unit::Sessions,
            rss: false,
            cells: servers
                .iter()
                .map(|&(name, seconds)| cell(name, vec![rep(seconds)], Unit::Sessions, false))
                .collect(),
        }
    }

    /// A fixed report: two rows against Dovecot (one better, one worse), one S6 row of
    /// three shapes (two bars: the first shape is the reference).
    fn report() -> Report {
        report_of(vec![
            row("S1", "login+STAT+QUIT", &[("pop3d", 0.5), ("dovecot", 1.0)]),
            row("S2", "download", &[("pop3d", 2.0), ("dovecot", 1.0)]),
            row(
                "S6",
                "download",
                &[
                    ("(a) SQLite", 1.0),
                    ("(b) PostgreSQL", 1.25),
                    ("(c) nginx", 2.0),
                ],
            ),
        ])
    }

    #[test]
    fn one_bar_per_row_and_shape() {
        let bars = bars(&report());
        let ratios: Vec<(f64, bool)> = bars.iter().map(|b| (b.ratio, b.shape)).collect();
        assert_eq!(
            ratios,
            [(2.0, false), (0.5, false), (0.8, true), (0.5, true)],
            "{bars:?}"
        );
        assert_eq!(bars[0].label, "S1 login+STAT+QUIT (plain, c=16)");
    }

    /// Issue 18 item 5: the chart is an SVG document with one bar per ratio, coloured by
    /// what it compares, the 1x line and every label.
    #[test]
    fn the_chart_is_svg_with_one_bar_per_row() {
        let bars = bars(&report());
        let svg = svg(&bars, "pop3d / Dovecot").expect("chart");
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        let fill = |c: RGBColor| format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
        let count = |c: RGBColor| svg.matches(&fill(c)).count();
        assert_eq!(
            (count(BETTER), count(WORSE), count(SHAPE)),
            (1, 1, 2),
            "{svg}"
        );
        for b in &bars {
            assert!(svg.contains(&xml_escape(&b.label)), "{} missing", b.label);
        }
        assert!(svg.contains("2.00x") && svg.contains("0.80x"));
        let empty = svg_of_nothing();
        assert!(empty.starts_with("<svg"));
    }

    fn svg_of_nothing() -> String {
        svg(&[], "nothing measured").expect("chart")
    }

    fn xml_escape(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }
}
