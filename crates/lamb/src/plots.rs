//! Line charts as PNG and SVG (accuracy, loss and trust-ratio curves), drawn with plotters and
//! the DejaVu Sans font embedded in the binary, so text renders on any machine.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::atomic::{write_atomic, write_atomic_via_path};

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dash {
    /// Solid line (test/validation curves in the classic figures).
    Solid,
    /// Dashed line (training curves).
    Dashed,
}

/// One curve of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y); non-finite points are left out.
    pub points: Vec<(f64, f64)>,
    /// Palette index (same index, same colour).
    pub color: usize,
    /// Line style.
    pub dash: Dash,
}

/// A chart: title, axis labels and its curves.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// Curves.
    pub series: Vec<Series>,
    /// Logarithmic y axis (trust ratios span decades).
    pub log_y: bool,
    /// Legend in the upper right corner (falling curves) instead of the lower right.
    pub legend_top: bool,
    /// Logarithmic x axis (batch sizes); ticks are labelled with the values themselves.
    pub log_x: bool,
}

const SIZE: (u32, u32) = (900, 600);

fn palette(i: usize) -> RGBColor {
    const P: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    P[i % P.len()]
}

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is a valid TrueType file; a failure here would only remove text.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Writes `stem.png` and `stem.svg` (atomically); returns the two paths.
pub fn write_chart(stem: &Path, chart: &Chart) -> Result<(PathBuf, PathBuf)> {
    register_fonts();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    write_atomic_via_path(&png, |tmp| {
        let root = BitMapBackend::new(tmp, SIZE).into_drawing_area();
        draw(&root, chart)?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", png.display()))
    })?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        draw(&root, chart)?;
        root.present()
            .map_err(|e| anyhow!("rendering {}: {e}", svg.display()))?;
    }
    write_atomic(&svg, text.as_bytes())?;
    Ok((png, svg))
}

/// The chart's finite points, with y replaced by log10(y) on a log chart (non-positive y
/// dropped there).
fn plotted_points(chart: &Chart, s: &Series) -> Vec<(f64, f64)> {
    s.points
        .iter()
        .filter(|(x, y)| {
            x.is_finite()
                && y.is_finite()
                && (!chart.log_y || *y > 0.0)
                && (!chart.log_x || *x > 0.0)
        })
        .map(|&(x, y)| {
            (
                if chart.log_x { x.log10() } else { x },
                if chart.log_y { y.log10() } else { y },
            )
        })
        .collect()
}

fn bounds(chart: &Chart) -> (f64, f64, f64, f64) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for s in &chart.series {
        for (x, y) in plotted_points(chart, s) {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x0 -= 0.5;
        x1 += 0.5;
    }
    let pad = ((y1 - y0) * 0.05).max(if chart.log_y { 0.02 } else { 1e-3 });
    (x0, x1, y0 - pad, y1 + pad)
}

/// Tick label of an x value: whole numbers only (epochs), other ticks left blank.
fn x_tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

/// Tick label of a y value with enough digits for its magnitude.
fn y_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let digits = (2 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let t = format!("{v:.digits$}");
        if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            t
        }
    }
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing chart: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let (x0, x1, y0, y1) = bounds(chart);
    let log = chart.log_y;
    let log_x = chart.log_x;
    let x_fmt = move |v: &f64| {
        if log_x {
            y_tick(10f64.powf(*v))
        } else {
            x_tick(v)
        }
    };
    let y_fmt = move |v: &f64| y_tick(if log { 10f64.powf(*v) } else { *v });
    let mut ctx = ChartBuilder::on(root)
        .caption(&chart.title, ("sans-serif", 24).into_font())
        .margin(15)
        .margin_right(30)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    let y_desc = if log {
        format!("{} (log scale)", chart.y_label)
    } else {
        chart.y_label.clone()
    };
    ctx.configure_mesh()
        .x_desc(if log_x {
            format!("{} (log scale)", chart.x_label)
        } else {
            chart.x_label.clone()
        })
        .y_desc(y_desc)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for s in &chart.series {
        let pts = plotted_points(chart, s);
        let st = ShapeStyle {
            color: palette(s.color).to_rgba(),
            filled: false,
            stroke_width: 2,
        };
        // Markers make single points (one epoch, one batch size) visible.
        ctx.draw_series(
            pts.iter()
                .map(|&p| Circle::new(p, 3, palette(s.color).filled())),
        )
        .map_err(err)?;
        let anno = match s.dash {
            Dash::Solid => ctx.draw_series(LineSeries::new(pts, st)).map_err(err)?,
            Dash::Dashed => ctx
                .draw_series(DashedLineSeries::new(pts, 8, 5, st))
                .map_err(err)?,
        };
        let dashed = s.dash == Dash::Dashed;
        anno.label(&s.label).legend(move |(x, y)| {
            let pts = if dashed {
                vec![(x, y), (x + 8, y)]
            } else {
                vec![(x, y), (x + 20, y)]
            };
            let tail = if dashed {
                vec![(x + 13, y), (x + 20, y)]
            } else {
                vec![]
            };
            EmptyElement::at((0, 0)) + PathElement::new(pts, st) + PathElement::new(tail, st)
        });
    }
    if !chart.series.is_empty() {
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 15))
            .position(if chart.legend_top {
                SeriesLabelPosition::UpperRight
            } else {
                SeriesLabelPosition::LowerRight
            })
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(log_y: bool) -> Chart {
        Chart {
            title: "Accuracy".into(),
            x_label: "epoch".into(),
            y_label: "accuracy".into(),
            series: vec![
                Series {
                    label: "train".into(),
                    points: (1..=10)
                        .map(|e| (e as f64, 0.3 + 0.05 * e as f64))
                        .collect(),
                    color: 0,
                    dash: Dash::Dashed,
                },
                Series {
                    label: "test".into(),
                    points: (1..=10)
                        .map(|e| (e as f64, 0.25 + 0.04 * e as f64))
                        .collect(),
                    color: 0,
                    dash: Dash::Solid,
                },
            ],
            log_y,
            legend_top: false,
            log_x: false,
        }
    }

    #[test]
    fn writes_valid_png_and_svg_with_text() {
        let dir = tempfile::tempdir().unwrap();
        for log_y in [false, true] {
            let (png, svg) =
                write_chart(&dir.path().join(format!("c{log_y}")), &demo(log_y)).unwrap();
            let bytes = std::fs::read(&png).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            let text = std::fs::read_to_string(&svg).unwrap();
            assert!(text.starts_with("<svg"), "{}", &text[..40.min(text.len())]);
            assert!(text.contains("Accuracy") && text.contains("train") && text.contains("epoch"));
        }
        // Only the four final files: no temporary left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    }

    #[test]
    fn tick_labels() {
        assert_eq!(x_tick(&3.0), "3");
        assert_eq!(x_tick(&3.5), "");
        assert_eq!(y_tick(0.7943), "0.794");
        assert_eq!(y_tick(0.5), "0.5");
        assert_eq!(y_tick(12.0), "12");
        assert_eq!(y_tick(0.0), "0");
        assert_eq!(y_tick(2e-5), "2.0e-5");
    }

    #[test]
    fn empty_and_degenerate_series_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = demo(false);
        c.series[0].points = vec![(1.0, f64::NAN)];
        c.series[1].points = vec![(1.0, 0.5)];
        write_chart(&dir.path().join("d"), &c).unwrap();
        c.series.clear();
        write_chart(&dir.path().join("e"), &c).unwrap();
    }
}
