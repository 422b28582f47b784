//! Latency-over-time charts as PNG files, with no plotting library: a small
//! RGB canvas (lines, rectangles, a built-in 5×7 pixel font) and a PNG
//! encoder made of `flate2` (zlib) and `crc32fast`, both already workspace
//! dependencies. Enough for a grid of line charts with a log-scale y axis,
//! which is what a latency series needs (a stall of 50 ms and a p99 of
//! 0.5 ms must both be readable).

use std::io::Write as _;

pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GREY: Rgb = [150, 150, 150];
pub const LIGHT: Rgb = [225, 225, 225];

/// One line of a panel: `(x, y)` points with y > 0 (log scale).
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub color: Rgb,
    pub points: Vec<(f64, f64)>,
}

/// One chart of the grid.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
    /// A dashed horizontal line (a target) at this y, with its label.
    pub target: Option<(f64, String)>,
}

/// A grid of panels sharing one legend (taken from the first panel's
/// series), one x range and one log-scale y range.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub panels: &'a [Panel],
    pub columns: usize,
    /// The end of the x axis (default: the largest x of any point).
    pub x_max: Option<f64>,
}

const PANEL_W: usize = 430;
const PANEL_H: usize = 300;
/// Room around each panel's plot area: left for y ticks, bottom for x ticks,
/// top for the title.
const MARGIN_L: usize = 62;
const MARGIN_R: usize = 16;
const MARGIN_T: usize = 30;
const MARGIN_B: usize = 40;
const HEADER_H: usize = 70;

impl Chart<'_> {
    /// The chart as a PNG file.
    pub fn to_png(&self) -> Vec<u8> {
        self.draw().to_png()
    }

    fn draw(&self) -> Canvas {
        let cols = self.columns.max(1);
        let rows = self.panels.len().div_ceil(cols).max(1);
        let mut c = Canvas::new(cols * PANEL_W, HEADER_H + rows * PANEL_H, WHITE);
        c.text(12, 10, self.title, BLACK, 2);
        // The legend, from the first panel.
        let mut x = 12;
        if let Some(first) = self.panels.first() {
            for s in &first.series {
                c.fill_rect(x, 42, x + 18, 48, s.color);
                x += 24;
                x += c.text(x, 40, &s.label, BLACK, 1) + 18;
            }
            if let Some((_, label)) = &first.target {
                c.dashed_hline(x, x + 18, 45, GREY);
                x += 24;
                c.text(x, 40, label, BLACK, 1);
            }
        }

        let all_points = || {
            self.panels
                .iter()
                .flat_map(|p| p.series.iter().flat_map(|s| s.points.iter()))
        };
        let x_max = self
            .x_max
            .unwrap_or_else(|| all_points().map(|p| p.0).fold(1.0f64, f64::max));
        let ys = all_points()
            .map(|p| p.1)
            .chain(
                self.panels
                    .iter()
                    .filter_map(|p| p.target.as_ref().map(|t| t.0)),
            )
            .filter(|y| *y > 0.0 && y.is_finite());
        let (y_lo, y_hi) = ys.fold((f64::INFINITY, 0.0f64), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
        let (y_lo, y_hi) = if y_hi > 0.0 {
            (
                10f64.powf(y_lo.log10().floor()),
                10f64.powf(y_hi.log10().ceil().max(y_lo.log10().floor() + 1.0)),
            )
        } else {
            (0.1, 10.0)
        };

        for (i, panel) in self.panels.iter().enumerate() {
            let ox = (i % cols) * PANEL_W;
            let oy = HEADER_H + (i / cols) * PANEL_H;
            self.draw_panel(&mut c, panel, ox, oy, x_max, y_lo, y_hi);
        }
        c
    }

    #[allow(clippy::too_many_arguments)]
    fn draw_panel(
        &self,
        c: &mut Canvas,
        panel: &Panel,
        ox: usize,
        oy: usize,
        x_max: f64,
        y_lo: f64,
        y_hi: f64,
    ) {
        let (x0, x1) = (ox + MARGIN_L, ox + PANEL_W - MARGIN_R);
        let (y0, y1) = (oy + MARGIN_T, oy + PANEL_H - MARGIN_B);
        c.text(x0, oy + 8, &panel.title, BLACK, 1);
        let px = |x: f64| x0 as f64 + (x / x_max).clamp(0.0, 1.0) * (x1 - x0) as f64;
        let py = |y: f64| {
            let f = (y.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10());
            y1 as f64 - f.clamp(0.0, 1.0) * (y1 - y0) as f64
        };
        // Grid and y ticks: every decade, and 2 and 5 within it.
        let mut decade = y_lo;
        while decade <= y_hi * 1.0001 {
            for (m, major) in [(1.0, true), (2.0, false), (5.0, false)] {
                let v = decade * m;
                if v > y_hi * 1.0001 {
                    break;
                }
                let y = py(v).round() as usize;
                c.hline(x0, x1, y, if major { LIGHT } else { [242, 242, 242] });
                let label = fmt_tick(v);
                let w = text_width(&label, 1);
                c.text(
                    x0.saturating_sub(w + 6),
                    y.saturating_sub(3),
                    &label,
                    BLACK,
                    1,
                );
            }
            decade *= 10.0;
        }
        // X ticks: about six.
        let step = nice_step(x_max / 6.0);
        let mut t = 0.0;
        while t <= x_max + 1e-9 {
            let x = px(t).round() as usize;
            c.vline(x, y0, y1, LIGHT);
            let label = fmt_tick(t);
            let w = text_width(&label, 1);
            c.text(x.saturating_sub(w / 2), y1 + 6, &label, BLACK, 1);
            t += step;
        }
        c.text(
            x0 + (x1 - x0) / 2 - text_width(self.x_label, 1) / 2,
            y1 + 20,
            self.x_label,
            GREY,
            1,
        );
        c.text(ox + 4, y0.saturating_sub(14), self.y_label, GREY, 1);
        // Axes.
        c.hline(x0, x1, y1, BLACK);
        c.vline(x0, y0, y1, BLACK);
        if let Some((y, _)) = &panel.target {
            c.dashed_hline(x0, x1, py(*y).round() as usize, GREY);
        }
        for s in &panel.series {
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.1 > 0.0 && p.1.is_finite())
                .map(|&(x, y)| (px(x), py(y)))
                .collect();
            for w in pts.windows(2) {
                c.line(w[0], w[1], s.color);
            }
            if pts.len() == 1 {
                let (x, y) = (pts[0].0 as usize, pts[0].1 as usize);
                c.fill_rect(
                    x.saturating_sub(2),
                    y.saturating_sub(2),
                    x + 2,
                    y + 2,
                    s.color,
                );
            }
        }
    }
}

/// A tick label: `0.1`, `2`, `50`, `1000`.
fn fmt_tick(v: f64) -> String {
    if v.fract().abs() > 1e-9 && v >= 1.0 {
        format!("{v:.1}")
    } else if v >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

/// An RGB image.
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<Rgb>,
}

impl Canvas {
    pub fn new(w: usize, h: usize, bg: Rgb) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![bg; w * h],
        }
    }

    fn set(&mut self, x: usize, y: usize, c: Rgb) {
        if x < self.w && y < self.h {
            self.px[y * self.w + x] = c;
        }
    }

    /// Inclusive corners.
    pub fn fill_rect(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: Rgb) {
        for y in y0..=y1.min(self.h.saturating_sub(1)) {
            for x in x0..=x1.min(self.w.saturating_sub(1)) {
                self.set(x, y, c);
            }
        }
    }

    fn hline(&mut self, x0: usize, x1: usize, y: usize, c: Rgb) {
        self.fill_rect(x0, y, x1, y, c);
    }

    fn vline(&mut self, x: usize, y0: usize, y1: usize, c: Rgb) {
        self.fill_rect(x, y0, x, y1, c);
    }

    fn dashed_hline(&mut self, x0: usize, x1: usize, y: usize, c: Rgb) {
        for x in (x0..=x1).filter(|x| (x - x0) % 8 < 5) {
            self.set(x, y, c);
            self.set(x, y + 1, c);
        }
    }

    /// A line two pixels wide between two points (in pixels, fractional).
    fn line(&mut self, a: (f64, f64), b: (f64, f64), c: Rgb) {
        let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let x = (a.0 + (b.0 - a.0) * t).round();
            let y = (a.1 + (b.1 - a.1) * t).round();
            if x >= 0.0 && y >= 0.0 {
                let (x, y) = (x as usize, y as usize);
                self.set(x, y, c);
                self.set(x + 1, y, c);
                self.set(x, y + 1, c);
                self.set(x + 1, y + 1, c);
            }
        }
    }

    /// Draw `s` with its top left corner at `(x, y)`, each font pixel a
    /// `scale`-sized square; the width drawn. Lower case is drawn as upper
    /// case; characters without a glyph as a small box.
    pub fn text(&mut self, x: usize, y: usize, s: &str, c: Rgb, scale: usize) -> usize {
        let mut cx = x;
        for ch in s.chars() {
            let rows = glyph(ch);
            for (ry, bits) in rows.iter().enumerate() {
                for rx in 0..5 {
                    if bits & (0b10000 >> rx) != 0 {
                        let (px, py) = (cx + rx * scale, y + ry * scale);
                        self.fill_rect(px, py, px + scale - 1, py + scale - 1, c);
                    }
                }
            }
            cx += 6 * scale;
        }
        cx - x
    }

    /// The image as a PNG file: 8-bit RGB, no interlacing, every scanline
    /// with filter 0, one zlib-compressed IDAT chunk.
    pub fn to_png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.h * (1 + 3 * self.w));
        for row in self.px.chunks(self.w) {
            raw.push(0);
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw).expect("writing to a Vec cannot fail");
        let idat = z.finish().expect("writing to a Vec cannot fail");

        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::with_capacity(13);
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        // Bit depth 8, colour type 2 (RGB), deflate, filter method 0, no interlace.
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &idat);
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

/// One PNG chunk: length, type, data, CRC-32 of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// Pixels `text` takes at `scale`.
pub fn text_width(s: &str, scale: usize) -> usize {
    s.chars().count() * 6 * scale
}

/// The 5×7 glyph of `ch`: seven rows, bit 4 the leftmost column.
fn glyph(ch: char) -> [u8; 7] {
    let rows: [&str; 7] = match ch.to_ascii_uppercase() {
        ' ' => [
            ".....", ".....", ".....", ".....", ".....", ".....", ".....",
        ],
        '0' => [
            ".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###.",
        ],
        '1' => [
            "..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        '2' => [
            ".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####",
        ],
        '3' => [
            "####.", "....#", "....#", ".###.", "....#", "....#", "####.",
        ],
        '4' => [
            "...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#.",
        ],
        '5' => [
            "#####", "#....", "####.", "....#", "....#", "#...#", ".###.",
        ],
        '6' => [
            "..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###.",
        ],
        '7' => [
            "#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#...",
        ],
        '8' => [
            ".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###.",
        ],
        '9' => [
            ".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##..",
        ],
        'A' => [
            ".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
        'B' => [
            "####.", "#...#", "#...#", "####.", "#...#", "#...#", "####.",
        ],
        'C' => [
            ".###.", "#...#", "#....", "#....", "#....", "#...#", ".###.",
        ],
        'D' => [
            "###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###..",
        ],
        'E' => [
            "#####", "#....", "#....", "####.", "#....", "#....", "#####",
        ],
        'F' => [
            "#####", "#....", "#....", "####.", "#....", "#....", "#....",
        ],
        'G' => [
            ".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####",
        ],
        'H' => [
            "#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#",
        ],
        'I' => [
            ".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###.",
        ],
        'J' => [
            "..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##..",
        ],
        'K' => [
            "#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#",
        ],
        'L' => [
            "#....", "#....", "#....", "#....", "#....", "#....", "#####",
        ],
        'M' => [
            "#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#",
        ],
        'N' => [
            "#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#",
        ],
        'O' => [
            ".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
        'P' => [
            "####.", "#...#", "#...#", "####.", "#....", "#....", "#....",
        ],
        'Q' => [
            ".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#",
        ],
        'R' => [
            "####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#",
        ],
        'S' => [
            ".####", "#....", "#....", ".###.", "....#", "....#", "####.",
        ],
        'T' => [
            "#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#..",
        ],
        'U' => [
            "#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###.",
        ],
        'V' => [
            "#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#..",
        ],
        'W' => [
            "#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#.",
        ],
        'X' => [
            "#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#",
        ],
        'Y' => [
            "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#..",
        ],
        'Z' => [
            "#####", "....#", "...#.", "..#..", ".#...", "#....", "#####",
        ],
        '.' => [
            ".....", ".....", ".....", ".....", ".....", ".##..", ".##..",
        ],
        ',' => [
            ".....", ".....", ".....", ".....", ".##..", "..#..", ".#...",
        ],
        ':' => [
            ".....", ".##..", ".##..", ".....", ".##..", ".##..", ".....",
        ],
        '/' => [
            ".....", "....#", "...#.", "..#..", ".#...", "#....", ".....",
        ],
        '-' => [
            ".....", ".....", ".....", "#####", ".....", ".....", ".....",
        ],
        '+' => [
            ".....", "..#..", "..#..", "#####", "..#..", "..#..", ".....",
        ],
        '=' => [
            ".....", ".....", "#####", ".....", "#####", ".....", ".....",
        ],
        '<' => [
            "...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#.",
        ],
        '>' => [
            ".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#...",
        ],
        '(' => [
            "...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#.",
        ],
        ')' => [
            ".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#...",
        ],
        '%' => [
            "##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##",
        ],
        '_' => [
            ".....", ".....", ".....", ".....", ".....", ".....", "#####",
        ],
        '*' => [
            ".....", "#.#.#", ".###.", "#####", ".###.", "#.#.#", ".....",
        ],
        '×' => [
            ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", ".....",
        ],
        'µ' => [
            ".....", "#...#", "#...#", "#...#", "##.##", "#.#..", "#....",
        ],
        _ => [
            "#####", "#...#", "#...#", "#...#", "#...#", "#...#", "#####",
        ],
    };
    rows.map(|r| {
        r.bytes()
            .fold(0u8, |acc, b| (acc << 1) | u8::from(b == b'#'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_has_signature_chunks_and_valid_crcs() {
        let mut c = Canvas::new(7, 3, WHITE);
        c.fill_rect(1, 1, 2, 2, BLACK);
        let png = c.to_png();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // Walk the chunks and check each CRC.
        let mut at = 8;
        let mut kinds = Vec::new();
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            let mut h = crc32fast::Hasher::new();
            h.update(kind);
            h.update(data);
            assert_eq!(h.finalize(), crc);
            kinds.push(String::from_utf8(kind.to_vec()).unwrap());
            at += 12 + len;
        }
        assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
        // The image data inflates to one filter byte plus RGB per row.
        let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        let mut raw = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(&png[41..41 + idat_len]),
            &mut raw,
        )
        .unwrap();
        assert_eq!(raw.len(), 3 * (1 + 3 * 7));
        // Row 1 (after row 0's 22 bytes and its own filter byte), pixel 1.
        assert_eq!(&raw[22 + 1 + 3..22 + 1 + 6], &BLACK);
        assert_eq!(&raw[1..4], &WHITE);
    }

    #[test]
    fn every_glyph_is_five_wide() {
        for ch in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:/-+=<>()%_*×µ?".chars() {
            assert!(glyph(ch).iter().all(|r| *r < 32), "{ch}");
        }
        assert_eq!(glyph('a'), glyph('A'));
    }

    #[test]
    fn steps_and_ticks_are_round() {
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(0.4), 0.5);
        assert_eq!(nice_step(7.0), 10.0);
        assert_eq!(fmt_tick(0.5), "0.5");
        assert_eq!(fmt_tick(20.0), "20");
        assert_eq!(fmt_tick(1.5), "1.5");
    }

    #[test]
    fn a_chart_renders() {
        let panel = Panel {
            title: "YCSB A".into(),
            series: vec![Series {
                label: "dotkv".into(),
                color: [0, 90, 200],
                points: vec![(0.0, 0.4), (0.5, 0.6), (1.0, 12.0)],
            }],
            target: Some((2.0, "target".into())),
        };
        let png = Chart {
            title: "t",
            x_label: "s",
            y_label: "ms",
            panels: &[panel.clone(), panel],
            columns: 2,
            x_max: None,
        }
        .to_png();
        assert!(png.len() > 100);
    }
}
