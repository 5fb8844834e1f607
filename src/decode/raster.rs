//! Pixel plumbing for the decoders: float colour planes, box blur, connected components and
//! hole filling. Plain loops over row-major buffers; no allocation per pixel.

use image::RgbImage;

/// An RGB image as `f32` triples (0-255), row-major.
#[derive(Debug, Clone)]
pub struct Planes {
    pub width: usize,
    pub height: usize,
    pub px: Vec<[f32; 3]>,
}

impl Planes {
    pub fn from_image(img: &RgbImage) -> Self {
        Self {
            width: img.width() as usize,
            height: img.height() as usize,
            px: img
                .pixels()
                .map(|p| [p[0] as f32, p[1] as f32, p[2] as f32])
                .collect(),
        }
    }

    /// A `(2r+1)^2` box blur (edges clamped), done as two running-sum passes: along each
    /// row, then down the columns a whole row at a time (cache friendly).
    pub fn box_blur(&self, r: usize) -> Self {
        if r == 0 {
            return self.clone();
        }
        let (w, h) = (self.width, self.height);
        let n = (2 * r + 1) as f32;
        let clamp = |i: isize, len: usize| i.clamp(0, len as isize - 1) as usize;
        let mut rows = vec![[0f32; 3]; w * h];
        for y in 0..h {
            let line = &self.px[y * w..(y + 1) * w];
            let out = &mut rows[y * w..(y + 1) * w];
            let mut acc = [0f32; 3];
            for i in -(r as isize)..=(r as isize) {
                let p = line[clamp(i, w)];
                (0..3).for_each(|c| acc[c] += p[c]);
            }
            for x in 0..w {
                out[x] = [acc[0] / n, acc[1] / n, acc[2] / n];
                let add = line[clamp(x as isize + r as isize + 1, w)];
                let sub = line[clamp(x as isize - r as isize, w)];
                (0..3).for_each(|c| acc[c] += add[c] - sub[c]);
            }
        }
        let mut px = vec![[0f32; 3]; w * h];
        let mut acc = vec![[0f32; 3]; w];
        for i in -(r as isize)..=(r as isize) {
            let y = clamp(i, h);
            for (a, p) in acc.iter_mut().zip(&rows[y * w..(y + 1) * w]) {
                (0..3).for_each(|c| a[c] += p[c]);
            }
        }
        for y in 0..h {
            for (o, a) in px[y * w..(y + 1) * w].iter_mut().zip(&acc) {
                *o = [a[0] / n, a[1] / n, a[2] / n];
            }
            let add = clamp(y as isize + r as isize + 1, h) * w;
            let sub = clamp(y as isize - r as isize, h) * w;
            for x in 0..w {
                let (pa, ps) = (rows[add + x], rows[sub + x]);
                (0..3).for_each(|c| acc[x][c] += pa[c] - ps[c]);
            }
        }
        Self {
            width: w,
            height: h,
            px,
        }
    }
}

/// 8-connected components of `mask`: a label per pixel (0 = background, 1.. = component)
/// and the number of components.
pub fn components(mask: &[bool], w: usize, h: usize) -> (Vec<u32>, usize) {
    let mut labels = vec![0u32; mask.len()];
    let mut count = 0;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        count += 1;
        labels[start] = count as u32;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] && labels[j] == 0 {
                        labels[j] = count as u32;
                        stack.push(j);
                    }
                }
            }
        }
    }
    (labels, count)
}

/// Fills the holes of `mask` (4-connected regions of unset pixels that do not reach the image
/// border) for which `fill(pixels)` says yes (row-major indices into `mask`). Only the set
/// pixels' box grown by one pixel is walked: outside it nothing is set, so a region reaching
/// the box's edge reaches the border too.
pub fn fill_holes(mask: &mut [bool], w: usize, h: usize, fill: impl Fn(&[usize]) -> bool) {
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for y in 0..h {
        let row = &mask[y * w..(y + 1) * w];
        if let (Some(a), Some(b)) = (row.iter().position(|m| *m), row.iter().rposition(|m| *m)) {
            (x0, y0, x1, y1) = (x0.min(a), y0.min(y), x1.max(b), y1.max(y));
        }
    }
    if x0 > x1 {
        return;
    }
    let (x0, y0) = (x0.saturating_sub(1), y0.saturating_sub(1));
    let (x1, y1) = ((x1 + 1).min(w - 1), (y1 + 1).min(h - 1));
    let mut seen = vec![false; mask.len()];
    let mut stack = Vec::new();
    let mut region = Vec::new();
    for sy in y0..=y1 {
        for sx in x0..=x1 {
            let start = sy * w + sx;
            if mask[start] || seen[start] {
                continue;
            }
            region.clear();
            let mut touches_border = false;
            seen[start] = true;
            stack.push(start);
            while let Some(i) = stack.pop() {
                region.push(i);
                let (x, y) = (i % w, i / w);
                if x == x0 || y == y0 || x == x1 || y == y1 {
                    touches_border = true;
                }
                let mut visit = |j: usize| {
                    if !mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                };
                if x > x0 {
                    visit(i - 1);
                }
                if x < x1 {
                    visit(i + 1);
                }
                if y > y0 {
                    visit(i - w);
                }
                if y < y1 {
                    visit(i + w);
                }
            }
            if !touches_border && fill(&region) {
                region.iter().for_each(|&i| mask[i] = true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_flat_regions_and_averages_edges() {
        let mut img = RgbImage::new(9, 5);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb(if x < 4 { [0, 0, 0] } else { [90, 90, 90] });
        }
        let b = Planes::from_image(&img).box_blur(1);
        assert_eq!(b.px[0], [0.0; 3]);
        assert_eq!(b.px[8], [90.0; 3]);
        assert!((b.px[3][0] - 30.0).abs() < 1e-4);
        assert!((b.px[4][1] - 60.0).abs() < 1e-4);
    }

    #[test]
    fn components_are_eight_connected_and_holes_fill_on_request() {
        #[rustfmt::skip]
        let m = [
            1, 1, 0, 0, 0,
            0, 0, 1, 0, 1,
            0, 0, 0, 0, 1,
        ].map(|v| v == 1);
        let (labels, n) = components(&m, 5, 3);
        assert_eq!(n, 2);
        assert_eq!(labels[0], labels[7]);
        assert_ne!(labels[0], labels[9]);
        #[rustfmt::skip]
        let mut ring = [
            1, 1, 1, 0,
            1, 0, 1, 0,
            1, 1, 1, 0,
        ].map(|v| v == 1);
        fill_holes(&mut ring, 4, 3, |r| r.len() > 5);
        assert!(!ring[5]);
        fill_holes(&mut ring, 4, 3, |r| r.len() == 1);
        assert!(ring[5] && !ring[3]);
    }
}
