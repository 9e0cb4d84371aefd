//! The roofline of a [`BenchReport`] as SVG (plotters' SVG backend only: no font or system
//! library): arithmetic intensity (FLOP per byte that must move) against TFLOP/s on log axes,
//! the measured ceilings as lines (read bandwidth × intensity, the FP8 GEMM throughputs), our
//! rows with FLOPs as points and cuBLASLt's on the same cases as crosses.

use plotters::prelude::*;

use super::report::BenchReport;

fn ceiling(r: &BenchReport, name: &str) -> Option<f64> {
    r.ceilings
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.value)
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// The roofline as an SVG document.
pub fn roofline_svg(r: &BenchReport) -> Result<String, String> {
    let ours: Vec<(f64, f64)> = r
        .rows
        .iter()
        .filter(|x| x.flops > 0.0 && x.tflops().is_finite() && x.tflops() > 0.0)
        .map(|x| (x.intensity(), x.tflops()))
        .collect();
    let theirs: Vec<(f64, f64)> = r
        .rows
        .iter()
        .filter_map(|x| x.baseline.as_ref().map(|b| (x.intensity(), x.flops / b.stats.median_us / 1e6)))
        .filter(|(_, y)| y.is_finite() && *y > 0.0)
        .collect();
    let read = ceiling(r, "read");
    let peaks: Vec<(&str, f64)> = [
        ("fp8-gemm-per-tensor", "cuBLASLt FP8 per-tensor"),
        ("fp8-gemm-block", "cuBLASLt FP8 block-scaled"),
    ]
    .iter()
    .filter_map(|(n, label)| ceiling(r, n).map(|v| (*label, v)))
    .collect();
    let xs = ours.iter().chain(&theirs).map(|p| p.0);
    let (x_lo, x_hi) = xs.fold((1.0f64, 1e4f64), |(lo, hi), x| (lo.min(x / 2.0), hi.max(x * 2.0)));
    let ys = ours.iter().chain(&theirs).map(|p| p.1).chain(peaks.iter().map(|p| p.1));
    let (y_lo, y_hi) = ys.fold((0.1f64, 10.0f64), |(lo, hi), y| (lo.min(y / 2.0), hi.max(y * 2.0)));
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let title = format!("moe bench roofline: {} ({})", r.device.name, r.device.backend);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("arithmetic intensity (FLOP per byte that must move)")
            .y_desc("TFLOP/s on live rows")
            .draw()
            .map_err(|e| e.to_string())?;
        if let Some(bw) = read {
            // TFLOP/s = GB/s · FLOP/B / 1000.
            let pts: Vec<(f64, f64)> = (0..=64)
                .map(|i| x_lo * (x_hi / x_lo).powf(i as f64 / 64.0))
                .map(|x| (x, bw * x / 1e3))
                .filter(|&(_, y)| y <= y_hi && y >= y_lo)
                .collect();
            chart
                .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(format!("read-only streaming {bw:.0} GB/s"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        }
        for (i, (label, v)) in peaks.iter().enumerate() {
            let color = if i == 0 { RED } else { MAGENTA };
            chart
                .draw_series(LineSeries::new(vec![(x_lo, *v), (x_hi, *v)], color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(format!("{label} {v:.0} TFLOP/s"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .draw_series(ours.iter().map(|&p| Circle::new(p, 5, GREEN.filled())))
            .map_err(|e| e.to_string())?
            .label("moe-fp8 (ours)")
            .legend(|(x, y)| Circle::new((x + 10, y), 5, GREEN.filled()));
        if !theirs.is_empty() {
            chart
                .draw_series(theirs.iter().map(|&p| Cross::new(p, 6, BLACK.stroke_width(2))))
                .map_err(|e| e.to_string())?
                .label("cuBLASLt per-expert loop")
                .legend(|(x, y)| Cross::new((x + 10, y), 6, BLACK));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
