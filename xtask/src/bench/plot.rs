//! The percentile-distribution plot: latency (log scale) against percentile on the usual HDR
//! axis (log of 1/(1−p): 0%, 90%, 99%, 99.9%, …), one line per path, as SVG and PNG
//! (plotters). Text needs a font: DejaVu Sans (Debian fonts-dejavu-core) is registered for
//! plotters' ab_glyph renderer; without it both files are drawn without text.
//! Must not: fail the benchmark (callers report a plot error and go on).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::install::FONT;

const SIZE: (u32, u32) = (1100, 650);
const COLORS: [RGBColor; 6] = [
    RGBColor(90, 90, 90),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Registers the font once; whether text can be drawn.
fn font() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let Ok(bytes) = std::fs::read(FONT) else { return false };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

/// x for percentile `p` (0..100): −log10(1 − p/100), capped at 6 nines.
fn x_of(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-6).log10()
}

/// Draws `series` (label, `[percentile, µs]` points) into `svg` and `png`.
pub(super) fn plot(series: &[(String, Vec<(f64, f64)>)], title: &str, svg: &Path, png: &Path) -> anyhow::Result<()> {
    let text = font();
    draw(SVGBackend::new(svg, SIZE).into_drawing_area(), series, title, text).context("SVG plot")?;
    draw(BitMapBackend::new(png, SIZE).into_drawing_area(), series, title, text).context("PNG plot")?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[(String, Vec<(f64, f64)>)],
    title: &str,
    text: bool,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, d)| d.iter().filter(|(p, v)| *p < 100.0 && *v > 0.0).map(|(p, v)| (x_of(*p), *v)).collect())
        .collect();
    let all = points.iter().flatten();
    let x_max = all.clone().map(|(x, _)| *x).fold(1.0f64, f64::max).ceil();
    let y_min = all.clone().map(|(_, y)| *y).fold(f64::INFINITY, f64::min).min(1e9);
    let y_max = all.map(|(_, y)| *y).fold(0.0f64, f64::max);
    let (y_min, y_max) = if y_max > 0.0 { (y_min * 0.8, y_max * 1.25) } else { (1.0, 10.0) };

    let mut builder = ChartBuilder::on(&root);
    builder.margin(20).margin_right(45);
    if text {
        builder.caption(title, ("sans-serif", 22)).x_label_area_size(50).y_label_area_size(70);
    }
    let mut chart =
        builder.build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(RGBColor(235, 235, 235));
    if text {
        mesh.x_desc("percentile")
            .y_desc("latency (µs, log scale)")
            .x_labels(x_max as usize + 1)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 15));
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for (i, ((label, _), pts)) in series.iter().zip(&points).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let drawn = chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if text {
            drawn
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

fn percentile_label(x: f64) -> String {
    let nines = x.round() as i32;
    if (x - f64::from(nines)).abs() > 1e-6 {
        return String::new();
    }
    match nines {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!("99.{}%", "9".repeat((n - 2) as usize)).replace("99.%", "99%"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
        assert!((x_of(99.9) - 3.0).abs() < 1e-9);
    }
}
