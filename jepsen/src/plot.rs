//! Plots: `latency-raw.png` (every operation's latency against time, log
//! scale, coloured by outcome) and `rate.png` (completions per second by
//! outcome), with the nemesis windows shaded behind.
//!
//! Drawn on a plain RGB canvas with a 3×5 pixel font and written as PNG
//! (zlib through flate2, CRC through crc32fast), so the harness needs no
//! plotting library or font files.

use crate::history::{pairs, Op, OpType, Process};
use anyhow::Result;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

type Rgb = [u8; 3];

const OK: Rgb = [31, 119, 180];
const FAIL: Rgb = [214, 39, 40];
const INFO: Rgb = [255, 127, 14];
const AXIS: Rgb = [60, 60, 60];
const GRID: Rgb = [225, 225, 225];

fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'J' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'Q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'Z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        '.' => [0, 0, 0, 0, 0b010],
        '-' => [0, 0, 0b111, 0, 0],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        ':' => [0, 0b010, 0, 0b010, 0],
        _ => [0; 5],
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    /// Paints one pixel, mixed with what is there (`alpha` 0..=1).
    fn dot(&mut self, x: i64, y: i64, c: Rgb, alpha: f32) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 {
            return;
        }
        let i = (y as usize * self.w + x as usize) * 3;
        for (p, new) in self.px[i..i + 3].iter_mut().zip(c) {
            let old = *p as f32;
            *p = (old + (new as f32 - old) * alpha).round() as u8;
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb, alpha: f32) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.dot(x, y, c, alpha);
            }
        }
    }

    fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.dot(x, y, c, 1.0);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text at scale 2 (6×10 pixel glyphs, 8 pixels apart).
    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (n, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        let (px, py) = (x + n as i64 * 8 + col * 2, y + row as i64 * 2);
                        self.rect(px, py, px + 1, py + 1, c, 1.0);
                    }
                }
            }
        }
    }

    fn png(&self, path: &Path) -> Result<()> {
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.finalize().to_be_bytes());
        }
        let mut raw = Vec::with_capacity((self.w * 3 + 1) * self.h);
        for row in self.px.chunks(self.w * 3) {
            raw.push(0); // filter: none
            raw.extend_from_slice(row);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw)?;
        let idat = z.finish()?;
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &idat);
        chunk(&mut out, b"IEND", &[]);
        std::fs::write(path, out)?;
        Ok(())
    }
}

/// Tint of a nemesis class.
fn tint(fault: &str) -> Rgb {
    if fault.starts_with("partition") {
        [255, 170, 170]
    } else if fault == "kill" {
        [170, 170, 255]
    } else if fault == "pause" {
        [170, 230, 170]
    } else if fault.starts_with("clock") {
        [250, 220, 140]
    } else {
        [210, 170, 240]
    }
}

/// Nemesis windows: (fault, start s, end s).
fn windows(history: &[Op], end: f64) -> Vec<(String, f64, f64)> {
    let mut open: HashMap<String, f64> = HashMap::new();
    let mut out = Vec::new();
    for op in history.iter().filter(|o| o.process == Process::nemesis()) {
        let t = op.time as f64 / 1e9;
        if let Some(f) = op.f.strip_prefix("start-") {
            open.insert(f.to_string(), t);
        } else if let Some(f) = op.f.strip_prefix("stop-") {
            if let Some(s) = open.remove(f) {
                out.push((f.to_string(), s, t));
            }
        }
    }
    out.extend(open.into_iter().map(|(f, s)| (f, s, end)));
    out
}

struct Frame {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
    t_max: f64,
}

impl Frame {
    fn x(&self, t: f64) -> i64 {
        self.left + ((t / self.t_max) * (self.right - self.left) as f64) as i64
    }
}

/// Background, nemesis shading, time axis, title and legend.
fn frame(c: &mut Canvas, history: &[Op], t_max: f64, title: &str) -> Frame {
    let f = Frame {
        left: 70,
        top: 40,
        right: c.w as i64 - 20,
        bottom: c.h as i64 - 40,
        t_max: t_max.max(1.0),
    };
    let mut legend: Vec<String> = Vec::new();
    for (fault, s, e) in windows(history, f.t_max) {
        c.rect(f.x(s), f.top, f.x(e), f.bottom, tint(&fault), 0.35);
        if !legend.contains(&fault) {
            legend.push(fault);
        }
    }
    let step = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]
        .into_iter()
        .find(|s| f.t_max / s <= 12.0)
        .unwrap_or(600.0);
    let mut t = 0.0;
    while t <= f.t_max {
        let x = f.x(t);
        c.line(x, f.top, x, f.bottom, GRID);
        c.text(x - 8, f.bottom + 8, &format!("{}", t as u64), AXIS);
        t += step;
    }
    c.line(f.left, f.bottom, f.right, f.bottom, AXIS);
    c.line(f.left, f.top, f.left, f.bottom, AXIS);
    c.text(f.right - 80, f.bottom + 24, "TIME S", AXIS);
    c.text(f.left, 10, title, AXIS);
    let mut x = f.left + title.len() as i64 * 8 + 30;
    for (name, col) in [("OK", OK), ("FAIL", FAIL), ("INFO", INFO)] {
        c.rect(x, 10, x + 9, 19, col, 1.0);
        c.text(x + 14, 10, name, AXIS);
        x += 14 + name.len() as i64 * 8 + 16;
    }
    for name in legend {
        c.rect(x, 10, x + 9, 19, tint(&name), 0.8);
        c.text(x + 14, 10, &name, AXIS);
        x += 14 + name.len() as i64 * 8 + 16;
    }
    f
}

fn color(kind: OpType) -> Rgb {
    match kind {
        OpType::Ok => OK,
        OpType::Fail => FAIL,
        _ => INFO,
    }
}

/// Writes `latency-raw.png` and `rate.png` into `dir`.
pub fn write_plots(dir: &Path, history: &[Op]) -> Result<()> {
    let t_max = history.last().map(|o| o.time as f64 / 1e9).unwrap_or(1.0);
    let ps: Vec<_> = pairs(history)
        .into_iter()
        .filter(|p| p.complete.is_some())
        .collect();

    let mut c = Canvas::new(1200, 500);
    let f = frame(&mut c, history, t_max, "LATENCY MS - LOG SCALE");
    // log10(ms) from -1 (0.1 ms) to 4 (10 s)
    let y = |ms: f64| -> i64 {
        let l = ms.max(0.1).log10().clamp(-1.0, 4.0);
        f.bottom - ((l + 1.0) / 5.0 * (f.bottom - f.top) as f64) as i64
    };
    for (ms, label) in [
        (0.1, "0.1"),
        (1.0, "1"),
        (10.0, "10"),
        (100.0, "100"),
        (1000.0, "1K"),
        (10000.0, "10K"),
    ] {
        c.line(f.left, y(ms), f.right, y(ms), GRID);
        c.text(f.left - 10 - label.len() as i64 * 8, y(ms) - 5, label, AXIS);
    }
    for p in &ps {
        let done = p.complete.expect("filtered");
        let ms = (done.time.saturating_sub(p.invoke.time)) as f64 / 1e6;
        let (px, py) = (f.x(p.invoke.time as f64 / 1e9), y(ms));
        c.rect(px - 1, py - 1, px + 1, py + 1, color(done.kind), 0.6);
    }
    c.png(&dir.join("latency-raw.png"))?;

    let mut c = Canvas::new(1200, 500);
    let f = frame(&mut c, history, t_max, "COMPLETIONS PER SECOND");
    let secs = t_max.ceil() as usize + 1;
    let mut buckets: HashMap<OpType, Vec<u64>> = HashMap::new();
    for p in &ps {
        let done = p.complete.expect("filtered");
        let kind = if done.kind == OpType::Invoke {
            OpType::Info
        } else {
            done.kind
        };
        let b = buckets.entry(kind).or_insert_with(|| vec![0; secs]);
        let i = ((done.time as f64 / 1e9) as usize).min(secs - 1);
        b[i] += 1;
    }
    let max = buckets
        .values()
        .flatten()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y = |v: f64| f.bottom - (v / max * (f.bottom - f.top) as f64) as i64;
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        c.line(f.left, y(v), f.right, y(v), GRID);
        let label = format!("{}", v.round() as u64);
        c.text(f.left - 10 - label.len() as i64 * 8, y(v) - 5, &label, AXIS);
    }
    for (kind, b) in &buckets {
        for i in 1..b.len() {
            let (x0, x1) = (f.x(i as f64 - 0.5), f.x(i as f64 + 0.5));
            c.line(x0, y(b[i - 1] as f64), x1, y(b[i] as f64), color(*kind));
        }
    }
    c.png(&dir.join("rate.png"))?;
    Ok(())
}
