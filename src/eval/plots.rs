//! Evaluation plots as PNG: Bland-Altman (mean of prediction and truth against their difference,
//! with the bias and the 95 % limits of agreement) and prediction against truth with the identity
//! line. Text is drawn with DejaVu Sans compiled into the binary (assets/fonts, Bitstream Vera
//! licence), so plotting needs no system fonts; pixels are encoded with the `image` crate.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::metrics::{self, RegressionMetrics};

/// Width and height of every plot, pixels.
pub const PLOT_SIZE: (u32, u32) = (900, 700);

/// The font every label is drawn with (registered with plotters as "sans-serif").
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the embedded plot font could not be read")]
    Font,
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("drawing {path}: {what}")]
    Draw { path: PathBuf, what: String },
    #[error("writing {path}: {what}")]
    Write { path: PathBuf, what: String },
}

fn ensure_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(PlotError::Font)
    }
}

/// A range that holds every value with 5 % padding; never empty.
fn padded(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !(lo.is_finite() && hi.is_finite()) {
        return 0.0..1.0;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 1.0 };
    (lo - pad)..(hi + pad)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws on a white canvas of [`PLOT_SIZE`] and writes it to `path` as PNG.
fn render(
    path: &Path,
    draw: impl FnOnce(&Area<'_>) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(), PlotError> {
    ensure_font()?;
    let (w, h) = PLOT_SIZE;
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    let drawing = |what: String| PlotError::Draw {
        path: path.to_path_buf(),
        what,
    };
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| drawing(e.to_string()))?;
        draw(&root).map_err(|e| drawing(e.to_string()))?;
        root.present().map_err(|e| drawing(e.to_string()))?;
    }
    let image = image::RgbImage::from_raw(w, h, pixels)
        .ok_or_else(|| drawing("pixel buffer has the wrong size".into()))?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| PlotError::Write {
            path: path.to_path_buf(),
            what: e.to_string(),
        })
}

fn unit_suffix(unit: &str) -> String {
    if unit.is_empty() {
        String::new()
    } else {
        format!(" ({unit})")
    }
}

/// Bland-Altman plot of `predictions` against `truths` for the estimator `name` in `unit`.
pub fn bland_altman(
    path: &Path,
    name: &str,
    unit: &str,
    predictions: &[f64],
    truths: &[f64],
) -> Result<RegressionMetrics, PlotError> {
    bland_altman_of(
        path,
        name,
        unit,
        predictions,
        truths,
        ("prediction", "truth"),
    )
}

/// [`bland_altman`] of any two measurements `a` and `b`, named `labels.0` and `labels.1` on the
/// plot (e.g. an int8 model's estimates against its f32 form's).
pub fn bland_altman_of(
    path: &Path,
    name: &str,
    unit: &str,
    predictions: &[f64],
    truths: &[f64],
    labels: (&str, &str),
) -> Result<RegressionMetrics, PlotError> {
    let (la, lb) = labels;
    let m = metrics::regression(predictions, truths)?;
    let points: Vec<(f64, f64)> = predictions
        .iter()
        .zip(truths)
        .map(|(p, t)| ((p + t) / 2.0, p - t))
        .collect();
    let xs = padded(points.iter().map(|p| p.0));
    let ys = padded(
        points
            .iter()
            .map(|p| p.1)
            .chain([m.loa_lower, m.loa_upper, 0.0]),
    );
    let u = unit_suffix(unit);
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "{}: {la} minus {lb}, n = {}, bias {:.2}, 95% limits {:.2} to {:.2}",
                    super::plain_name(name),
                    m.n,
                    m.bias,
                    m.loa_lower,
                    m.loa_upper
                ),
                (FAMILY, 22),
            )
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(75)
            .build_cartesian_2d(xs.clone(), ys)?;
        chart
            .configure_mesh()
            .x_desc(format!("mean of {la} and {lb}{u}"))
            .y_desc(format!("{la} - {lb}{u}"))
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 18))
            .draw()?;
        chart.draw_series(
            points
                .iter()
                .map(|&p| Circle::new(p, 4, BLUE.mix(0.6).filled())),
        )?;
        let hline = |y: f64| [(xs.start, y), (xs.end, y)];
        chart
            .draw_series(LineSeries::new(hline(m.bias), RED.stroke_width(2)))?
            .label(format!("bias {:.2}", m.bias))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
        for (y, what) in [
            (m.loa_upper, "upper limit, bias + 1.96 SD"),
            (m.loa_lower, "lower limit, bias - 1.96 SD"),
        ] {
            chart
                .draw_series(LineSeries::new(hline(y), BLACK.stroke_width(1)))?
                .label(format!("{what}: {y:.2}"))
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })?;
    Ok(m)
}

/// Prediction (y) against truth (x) with the identity line; R² and MAE in the title.
pub fn scatter(
    path: &Path,
    name: &str,
    unit: &str,
    predictions: &[f64],
    truths: &[f64],
) -> Result<RegressionMetrics, PlotError> {
    let m = metrics::regression(predictions, truths)?;
    // One range for both axes, so the identity line is the diagonal.
    let range = padded(predictions.iter().chain(truths).copied());
    let u = unit_suffix(unit);
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "{}: prediction against truth, n = {}, R² = {:.3}, MAE = {:.2}{}",
                    super::plain_name(name),
                    m.n,
                    m.r2,
                    m.mae,
                    if unit.is_empty() {
                        String::new()
                    } else {
                        format!(" {unit}")
                    }
                ),
                (FAMILY, 22),
            )
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(75)
            .build_cartesian_2d(range.clone(), range.clone())?;
        chart
            .configure_mesh()
            .x_desc(format!("truth{u}"))
            .y_desc(format!("prediction{u}"))
            .label_style((FAMILY, 15))
            .axis_desc_style((FAMILY, 18))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                [(range.start, range.start), (range.end, range.end)],
                BLACK.stroke_width(1),
            ))?
            .label("identity")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
        chart.draw_series(
            truths
                .iter()
                .zip(predictions)
                .map(|(&t, &p)| Circle::new((t, p), 4, BLUE.mix(0.6).filled())),
        )?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FAMILY, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<f64>, Vec<f64>) {
        let truths: Vec<f64> = (0..40).map(|i| 20.0 + i as f64 * 1.3).collect();
        let preds = truths
            .iter()
            .enumerate()
            .map(|(i, t)| t + ((i * 7919) % 13) as f64 - 6.0)
            .collect();
        (preds, truths)
    }

    fn check_png(path: &Path) {
        let img = image::open(path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), PLOT_SIZE);
        let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        // Points, lines, and antialiased text give many shades; a blank canvas gives one.
        assert!(distinct.len() > 50, "{} distinct colours", distinct.len());
        // Text was drawn: dark pixels in the caption band at the top.
        let dark = (0..40)
            .flat_map(|y| (0..PLOT_SIZE.0).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
            .count();
        assert!(dark > 100, "{dark} dark pixels in the caption band");
    }

    #[test]
    fn bland_altman_and_scatter_write_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let (p, t) = sample();
        let ba = dir.path().join("ba.png");
        let sc = dir.path().join("scatter.png");
        let m = bland_altman(&ba, "ef", "%", &p, &t).unwrap();
        assert_eq!(m, metrics::regression(&p, &t).unwrap());
        scatter(&sc, "ef", "%", &p, &t).unwrap();
        check_png(&ba);
        check_png(&sc);
    }

    #[test]
    fn plots_refuse_undefined_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let e = scatter(
            &dir.path().join("x.png"),
            "ef",
            "%",
            &[1.0, 2.0],
            &[5.0, 5.0],
        );
        assert!(matches!(
            e,
            Err(PlotError::Metrics(
                metrics::MetricsError::ConstantTruth { .. }
            ))
        ));
        let e = bland_altman(
            &dir.path().join("nope/x.png"),
            "ef",
            "%",
            &[1.0, 2.0],
            &[1.0, 5.0],
        );
        assert!(matches!(e, Err(PlotError::Write { .. })), "{e:?}");
    }
}
