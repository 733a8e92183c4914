//! bench/soak.png: per second, the agent's RSS, its CPU and the engine's connection table,
//! one line per mode, with the phases marked. Text is drawn with a system TTF font.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

use super::{Phase, SoakResults};

/// DejaVu Sans (Debian's fonts-dejavu-core), else any TTF fontconfig would pick.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

pub fn plot(r: &SoakResults, path: &Path) -> Result<()> {
    let font = FONTS
        .iter()
        .find_map(|f| std::fs::read(f).ok())
        .with_context(|| {
            format!(
                "no TTF font for the plot's text: looked for {}; apt-get install -y fonts-dejavu-core",
                FONTS.join(", ")
            )
        })?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow!("the font file is not a usable TTF"))?;
    let root = BitMapBackend::new(path, (1200, 1000)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((3, 1));
    let t_max = r
        .modes
        .iter()
        .flat_map(|m| m.samples.last())
        .map(|s| s.t_s)
        .fold(1.0, f64::max);
    type Metric = fn(&super::Sample) -> f64;
    let metrics: [(&str, Metric); 3] = [
        ("agent RSS (MiB)", |s| s.rss_kib as f64 / 1024.0),
        ("agent CPU (% of one core)", |s| s.cpu_pct),
        ("engine connections", |s| s.connections as f64),
    ];
    for (panel, (label, f)) in panels.iter().zip(metrics) {
        let y_max = r
            .modes
            .iter()
            .flat_map(|m| m.samples.iter().map(f))
            .fold(1.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(label, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds since attach")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, m) in r.modes.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    m.samples.iter().map(|s| (s.t_s, f(s))),
                    color.stroke_width(2),
                ))
                .map_err(|e| anyhow!("{e}"))?
                .label(format!("{} mode", m.mode))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
            // Where each phase after the first begins, as a thin vertical line.
            for phase in Phase::ALL.iter().skip(1) {
                if let Some(s) = m.samples.iter().find(|s| s.phase == *phase) {
                    chart
                        .draw_series(LineSeries::new(
                            [(s.t_s, 0.0), (s.t_s, y_max)],
                            color.mix(0.3),
                        ))
                        .map_err(|e| anyhow!("{e}"))?;
                }
            }
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}
