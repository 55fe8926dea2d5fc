//! Small grouped bar charts as standalone SVG, for the README. Hand-written on purpose:
//! the charting crates need a font backend (system fonts or a bundled TTF) to lay text out,
//! which is a heavy price for two bar charts whose text the browser lays out anyway.

use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 64.0;
const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round number at or above `max` for the top of the axis, and the tick step.
fn axis(max: f64) -> (f64, f64) {
    if max.is_nan() || max <= 0.0 {
        return (1.0, 0.25);
    }
    let magnitude = 10f64.powf(max.log10().floor());
    let step = [0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|f| f * magnitude)
        .find(|step| max / step <= 5.0)
        .unwrap_or(magnitude * 10.0);
    ((max / step).ceil() * step, step)
}

/// A grouped bar chart: one group per category, one bar per series in each.
/// `series` pairs a name with one value per category (NaN: no bar).
pub fn grouped_bars(
    title: &str,
    unit: &str,
    categories: &[&str],
    series: &[(String, Vec<f64>)],
) -> String {
    let max = series
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let (top, step) = axis(max);
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let y = |value: f64| TOP + plot_height * (1.0 - value / top);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/><text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"##,
        WIDTH / 2.0,
        escape(title)
    );
    let mut tick = 0.0;
    while tick <= top + step / 2.0 {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(tick) + 4.0,
            format_tick(tick),
            y = y(tick)
        );
        tick += step;
    }
    let _ = write!(
        svg,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + plot_height / 2.0,
        escape(unit)
    );
    let group_width = plot_width / categories.len().max(1) as f64;
    let bar_width = group_width * 0.8 / series.len().max(1) as f64;
    for (c, category) in categories.iter().enumerate() {
        let group_left = LEFT + group_width * c as f64 + group_width * 0.1;
        for (s, (_, values)) in series.iter().enumerate() {
            let Some(&value) = values.get(c).filter(|v| v.is_finite()) else {
                continue;
            };
            let x = group_left + bar_width * s as f64;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {value:.2}</title></rect>"#,
                y(value),
                bar_width * 0.92,
                (TOP + plot_height - y(value)).max(0.0),
                COLORS[s % COLORS.len()],
                escape(&series[s].0)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + group_width * (c as f64 + 0.5),
            TOP + plot_height + 18.0,
            escape(category)
        );
    }
    for (s, (name, _)) in series.iter().enumerate() {
        let x = LEFT + 110.0 * s as f64;
        let legend_y = HEIGHT - 18.0;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{}"/><text x="{}" y="{legend_y}">{}</text>"#,
            legend_y - 10.0,
            COLORS[s % COLORS.len()],
            x + 16.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn format_tick(value: f64) -> String {
    if value == value.trunc() {
        format!("{value:.0}")
    } else {
        format!("{value:.2}").trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round_and_hold_the_maximum() {
        for (max, top) in [(7.3, 8.0), (93.0, 100.0), (0.42, 0.5), (1234.0, 1250.0)] {
            let (got, step) = axis(max);
            assert!(
                got >= max && (got - top).abs() < 1e-9,
                "{max}: {got} step {step}"
            );
        }
    }

    #[test]
    fn draws_a_bar_per_finite_value_and_escapes_text() {
        let svg = grouped_bars(
            "a <b> & c",
            "µs",
            &["x", "y"],
            &[
                ("p50".into(), vec![1.0, 2.0]),
                ("p99".into(), vec![3.0, f64::NAN]),
            ],
        );
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
