//! Rendering report blocks to markdown and HTML, and grouped bar charts as inline SVG (no
//! script, no external assets).

use std::fmt::Write as _;

/// Escape text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Escaped text whose markdown links `[text](target)` become HTML links (a target with no
/// white space or quote); the rest stays literal.
fn linked(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let link = rest[open..].split_once("](").and_then(|(label, tail)| {
            let (target, after) = tail.split_once(')')?;
            let plain = !label[1..].contains(['[', ']']) && !target.is_empty();
            (plain && !target.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'')).then_some((
                &label[1..],
                target,
                after,
            ))
        });
        match link {
            Some((label, target, after)) => {
                out.push_str(&esc(&rest[..open]));
                out.push_str(&format!("<a href=\"{}\">{}</a>", esc(target), esc(label)));
                rest = after;
            }
            None => {
                out.push_str(&esc(&rest[..=open]));
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(&esc(rest));
    out
}

/// A value in [0, 1] short enough to sit above an 18 px bar: `.93`, `1`, `0`.
fn bar_label(v: f64) -> String {
    match format!("{v:.2}").as_str() {
        "1.00" => "1".into(),
        "0.00" => "0".into(),
        s => s.trim_start_matches('0').to_string(),
    }
}

/// The opening `<svg>` tag of a chart `width` × `height` px, with its title at `left`.
fn svg_open(width: f64, height: f64, left: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" font-size=\"11\">\
         <title>{t}</title><text x=\"{left}\" y=\"16\" font-weight=\"bold\">{t}</text>",
        t = esc(title)
    )
}

/// Horizontal lines and labels at 0, .25, .5, .75 and 1 of a plot `plot_h` px high from `top`.
fn y_grid(s: &mut String, left: f64, right: f64, top: f64, plot_h: f64) {
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = top + plot_h * (1.0 - tick);
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{right}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{tick:.2}</text>",
            left - 4.0,
            y + 4.0
        );
    }
}

/// One legend line: a colour swatch and the series name, at height `y`.
fn legend_entry(s: &mut String, left: f64, y: f64, color: &str, name: &str) {
    let _ = write!(
        s,
        "<rect x=\"{left}\" y=\"{y}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
        left + 14.0,
        y + 9.0,
        esc(name)
    );
}

/// A grouped bar chart of values in [0, 1]; `groups[i].1[j]` is series `j` of group `i`.
pub struct Chart {
    pub title: String,
    pub series: Vec<String>,
    pub groups: Vec<(String, Vec<Option<f64>>)>,
}

const COLORS: [&str; 6] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"];

impl Chart {
    pub fn svg(&self) -> String {
        let (left, top, plot_h, bar_w) = (44.0, 30.0, 160.0, 18.0);
        let group_w = (self.series.len() as f64 * bar_w + 24.0).max(100.0);
        let width = (left + self.groups.len() as f64 * group_w + 20.0).max(360.0);
        let height = top + plot_h + 34.0 + self.series.len() as f64 * 16.0;
        let mut s = svg_open(width, height, left, &self.title);
        y_grid(&mut s, left, width - 10.0, top, plot_h);
        for (gi, (label, values)) in self.groups.iter().enumerate() {
            let x0 = left + gi as f64 * group_w + (group_w - values.len() as f64 * bar_w) / 2.0;
            for (si, v) in values.iter().enumerate() {
                let Some(v) = v else { continue };
                let (x, h) = (x0 + si as f64 * bar_w, plot_h * v.clamp(0.0, 1.0));
                let _ = write!(
                    s,
                    "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"{}\"><title>{}: {v:.3}</title></rect>\
                     <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"8\">{}</text>",
                    top + plot_h - h,
                    bar_w - 2.0,
                    COLORS[si % COLORS.len()],
                    esc(self.series.get(si).map_or("", String::as_str)),
                    x + bar_w / 2.0 - 1.0,
                    top + plot_h - h - 2.0,
                    bar_label(*v)
                );
            }
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                left + (gi as f64 + 0.5) * group_w,
                top + plot_h + 14.0,
                esc(label)
            );
        }
        for (si, name) in self.series.iter().enumerate() {
            legend_entry(&mut s, left, top + plot_h + 26.0 + si as f64 * 16.0, COLORS[si % COLORS.len()], name);
        }
        s.push_str("</svg>");
        s
    }
}

/// A point of a [`Lines`] series: x, y and its tooltip.
pub type LinePoint = (f64, f64, String);

/// A line chart of values in [0, 1] against a count from 0: one polyline per series through
/// its points in x order, each point a circle whose tooltip names it.
pub struct Lines {
    pub title: String,
    pub x_label: String,
    /// `(name, points)`.
    pub series: Vec<(String, Vec<LinePoint>)>,
}

impl Lines {
    pub fn svg(&self) -> String {
        let (left, top, plot_w, plot_h) = (44.0, 30.0, 420.0, 160.0);
        let (width, height) = (left + plot_w + 20.0, top + plot_h + 40.0 + self.series.len() as f64 * 16.0);
        let max_x = self.series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).fold(0.0, f64::max).max(1.0);
        let (px, py) = (|x: f64| left + plot_w * x / max_x, |y: f64| top + plot_h * (1.0 - y.clamp(0.0, 1.0)));
        let mut s = svg_open(width, height, left, &self.title);
        y_grid(&mut s, left, left + plot_w, top, plot_h);
        for x in [0.0, max_x / 2.0, max_x] {
            let _ =
                write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x:.0}</text>", px(x), top + plot_h + 14.0);
        }
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            left + plot_w / 2.0,
            top + plot_h + 28.0,
            esc(&self.x_label)
        );
        for (si, (name, points)) in self.series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            let mut points: Vec<&LinePoint> = points.iter().collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let path: Vec<String> = points.iter().map(|(x, y, _)| format!("{},{}", px(*x), py(*y))).collect();
            let _ = write!(s, "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\"/>", path.join(" "));
            for (x, y, tip) in points {
                let _ = write!(
                    s,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{color}\"><title>{}</title></circle>",
                    px(*x),
                    py(*y),
                    esc(tip)
                );
            }
            legend_entry(&mut s, left, top + plot_h + 36.0 + si as f64 * 16.0, color, name);
        }
        s.push_str("</svg>");
        s
    }
}

pub const CSS: &str = "body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em}\
td{text-align:right}td:nth-child(-n+3){text-align:left}th{background:#f2f2f2}pre{background:#f7f7f7;padding:.6em}";

/// One piece of a report.
pub enum Block {
    Heading(usize, String),
    Text(String),
    Table(Vec<String>, Vec<Vec<String>>),
    Chart(Chart),
    Lines(Lines),
    /// Caller-supplied markdown: verbatim in `report.md`; in `report.html` its pipe tables become
    /// tables and its other paragraphs text (see [`markdown_blocks`]).
    Markdown(String),
}

impl Block {
    pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> Block {
        Block::Table(header.iter().map(|h| h.to_string()).collect(), rows)
    }

    pub fn markdown(&self, s: &mut String) {
        let row = |cells: &[String]| {
            format!("| {} |\n", cells.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | "))
        };
        match self {
            Block::Heading(level, text) => s.push_str(&format!("{} {text}\n\n", "#".repeat(*level))),
            Block::Text(text) => s.push_str(&format!("{text}\n\n")),
            Block::Table(header, rows) => {
                s.push_str(&row(header));
                s.push_str(&row(&header.iter().map(|_| "---".to_string()).collect::<Vec<_>>()));
                rows.iter().for_each(|r| s.push_str(&row(r)));
                s.push('\n');
            }
            Block::Chart(_) | Block::Lines(_) => {}
            Block::Markdown(body) => s.push_str(&format!("{}\n\n", body.trim_end())),
        }
    }

    pub fn html(&self, s: &mut String) {
        match self {
            Block::Heading(level, text) => s.push_str(&format!("<h{level}>{}</h{level}>\n", esc(text))),
            Block::Text(text) => s.push_str(&format!("<p>{}</p>\n", linked(text))),
            Block::Table(header, rows) => {
                s.push_str("<table><tr>");
                header.iter().for_each(|h| s.push_str(&format!("<th>{}</th>", esc(h))));
                s.push_str("</tr>\n");
                for r in rows {
                    s.push_str("<tr>");
                    r.iter().for_each(|c| s.push_str(&format!("<td>{}</td>", esc(c))));
                    s.push_str("</tr>\n");
                }
                s.push_str("</table>\n");
            }
            Block::Chart(chart) => s.push_str(&format!("<figure>{}</figure>\n", chart.svg())),
            Block::Lines(lines) => s.push_str(&format!("<figure>{}</figure>\n", lines.svg())),
            Block::Markdown(body) => markdown_blocks(body).iter().for_each(|b| b.html(s)),
        }
    }
}

/// The small markdown subset extra sections use: pipe tables (the `|---|` rule dropped) and
/// paragraphs separated by blank lines; anything else stays literal text.
pub fn markdown_blocks(body: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = body.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.starts_with('|') {
            let cells =
                |l: &str| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>();
            let header = cells(line);
            let mut rows = Vec::new();
            while let Some(next) = lines.next_if(|l| l.trim().starts_with('|')) {
                if !next.chars().all(|c| matches!(c, '|' | '-' | ':' | ' ')) {
                    rows.push(cells(next));
                }
            }
            out.push(Block::Table(header, rows));
        } else if !line.is_empty() {
            let mut text = line.to_string();
            while let Some(next) = lines.next_if(|l| !l.trim().is_empty() && !l.trim().starts_with('|')) {
                text.push(' ');
                text.push_str(next.trim());
            }
            out.push(Block::Text(text));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_defined_value_and_escaped_labels() {
        let chart = Chart {
            title: "F1 <all>".into(),
            series: vec!["teacher".into(), "student & co".into()],
            groups: vec![("a".into(), vec![Some(0.5), None]), ("b".into(), vec![Some(1.0), Some(0.0)])],
        };
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // 3 bars plus 2 legend swatches.
        assert_eq!(svg.matches("<rect").count(), 5);
        assert!(svg.contains("F1 &lt;all&gt;") && svg.contains("student &amp; co") && !svg.contains("<all>"));
        // A value of 1 fills the plot (160 px from y = 30); 0.5 is half of it.
        assert!(svg.contains("y=\"30\" width=\"16\" height=\"160\""), "{svg}");
        assert!(svg.contains("height=\"80\""), "{svg}");
        assert!(svg.contains(">.50</text>") && svg.contains(">1</text>") && svg.contains(">0</text>"), "{svg}");
        assert_eq!(bar_label(0.925), ".93");
    }

    #[test]
    fn one_line_and_one_circle_per_point_of_each_series_in_x_order() {
        let lines = Lines {
            title: "ade <F1>".into(),
            x_label: "silver sentences".into(),
            series: vec![
                ("student".into(), vec![(200.0, 0.5, "r2".into()), (100.0, 1.0, "r1 & co".into())]),
                ("teacher".into(), vec![(100.0, 0.0, "r1".into())]),
            ],
        };
        let svg = lines.svg();
        assert_eq!((svg.matches("<polyline").count(), svg.matches("<circle").count()), (2, 3));
        // x from 0 to the largest count over 420 px from 44; y = 1 at the top (30), 0 at 190.
        assert!(svg.contains("points=\"254,30 464,110\""), "{svg}");
        assert!(svg.contains("ade &lt;F1&gt;") && svg.contains("r1 &amp; co") && !svg.contains("<F1>"));
    }

    #[test]
    fn extra_markdown_tables_and_paragraphs_become_html() {
        let body = "| stage | seconds |\n|---|---|\n| label | 1.5 |\n\nTeacher: 3 requests,\n<2> cached.\n";
        let mut html = String::new();
        Block::Markdown(body.into()).html(&mut html);
        assert_eq!(
            html,
            "<table><tr><th>stage</th><th>seconds</th></tr>\n<tr><td>label</td><td>1.5</td></tr>\n</table>\n\
             <p>Teacher: 3 requests, &lt;2&gt; cached.</p>\n"
        );
        let mut md = String::new();
        Block::Markdown(body.into()).markdown(&mut md);
        assert_eq!(md, format!("{}\n\n", body.trim_end()));
    }

    #[test]
    fn markdown_links_in_paragraphs_become_html_links() {
        assert_eq!(linked("[spans.html](spans.html): 3 <b>"), "<a href=\"spans.html\">spans.html</a>: 3 &lt;b&gt;");
        assert_eq!(linked("a [x] (y) [b](c d) [e](\"f)"), "a [x] (y) [b](c d) [e](&quot;f)", "not links");
        assert_eq!(linked("[[a](b)"), "[<a href=\"b\">a</a>");
    }

    #[test]
    fn table_cells_are_escaped_for_each_format() {
        let table = Block::table(&["a|b", "c"], vec![vec!["<x>".into(), "1".into()]]);
        let (mut md, mut html) = (String::new(), String::new());
        table.markdown(&mut md);
        table.html(&mut html);
        assert_eq!(md, "| a\\|b | c |\n| --- | --- |\n| <x> | 1 |\n\n");
        assert_eq!(html, "<table><tr><th>a|b</th><th>c</th></tr>\n<tr><td>&lt;x&gt;</td><td>1</td></tr>\n</table>\n");
    }
}
