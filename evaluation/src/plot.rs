//! Charts as PNG: the training curves (the tutorial's plot) and ROC curves. Text is drawn with a
//! system TrueType font (DejaVu or Liberation, or `$IDC_FONT`); without one the chart is drawn
//! without labels and a warning says so.

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a font once; false when none was found.
fn have_font() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = std::env::var("IDC_FONT").into_iter().chain(FONT_PATHS.iter().map(|s| s.to_string()));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        eprintln!("warning: no TrueType font found (set IDC_FONT=/path/to/font.ttf); charts are drawn without text");
        false
    })
}

/// One named line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// A line chart with a legend, written to `path` (PNG, written atomically).
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    y_range: Option<(f64, f64)>,
) -> Result<()> {
    let text = have_font();
    let (w, h) = (900u32, 600u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let all = series.iter().flat_map(|s| &s.points);
        let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
        let (y_lo, y_hi) = y_range.unwrap_or_else(|| {
            let hi = all
                .clone()
                .map(|p| p.1)
                .filter(|v| v.is_finite())
                .fold(1.0, f64::max);
            (0.0, hi * 1.05)
        });
        let mut builder = ChartBuilder::on(&root);
        builder
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60);
        if text {
            builder.caption(title, ("sans-serif", 24));
        }
        let x_min = series
            .iter()
            .flat_map(|s| &s.points)
            .map(|p| p.0)
            .fold(x_max, f64::min)
            .min(0.0);
        let mut chart = builder
            .build_cartesian_2d(x_min..x_max, y_lo..y_hi)
            .map_err(|e| anyhow!("{e}"))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc(x_label).y_desc(y_label);
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw().map_err(|e| anyhow!("{e}"))?;
        for s in series {
            let color = s.color;
            let drawn = chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?;
            if text {
                drawn.label(s.name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size");
    common::fsutil::write_atomic(path, &common::png::encode(&img)?)
}

/// The ROC curve with the chance diagonal and the AUC in the title.
pub fn roc_chart(path: &Path, points: &[(f64, f64)], auc: Option<f64>) -> Result<()> {
    let title = match auc {
        Some(a) => format!("ROC curve (AUC {a:.4}), IDC positive"),
        None => "ROC curve (one class only)".into(),
    };
    line_chart(
        path,
        &title,
        "false positive rate (1 - specificity)",
        "true positive rate (sensitivity)",
        &[
            Series {
                name: "model",
                points: points.to_vec(),
                color: RED,
            },
            Series {
                name: "chance",
                points: vec![(0.0, 0.0), (1.0, 1.0)],
                color: RGBColor(150, 150, 150),
            },
        ],
        Some((0.0, 1.0)),
    )
}

/// Writes `lines` onto `img` (black, `size` px high), the first line's top-left at (`x`, `y`);
/// false when no font was found (nothing is drawn).
pub fn draw_text(
    img: &mut image::RgbImage,
    x: i32,
    y: i32,
    size: u32,
    lines: &[&str],
) -> Result<bool> {
    if !have_font() {
        return Ok(false);
    }
    let (w, h) = img.dimensions();
    let root = BitMapBackend::with_buffer(img.as_mut(), (w, h)).into_drawing_area();
    let style = ("sans-serif", size).into_font().color(&BLACK);
    for (i, line) in lines.iter().enumerate() {
        root.draw_text(line, &style, (x, y + i as i32 * (size as i32 * 5 / 4)))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(true)
}
