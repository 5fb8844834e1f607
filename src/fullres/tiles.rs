//! Overlapping tiles and their blending windows, for running a model of one working size over
//! a photo of any size. Tiles are placed evenly so that neighbours overlap by at least
//! `overlap`; each tile's weight rises with a smoothstep over `overlap` from every side that
//! has a neighbour (not from the photo's border), so weighted sums blend neighbours without a
//! step. [`Blend`] sums whole maps (latents); [`Bands`] sums rows of pixels and hands back
//! the finished ones as the tiles move down, so only a band of the photo is ever held.

use std::collections::VecDeque;

/// One tile, in the layout's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
    /// Which row of tiles it belongs to.
    pub row: usize,
}

/// Tiles covering a `width x height` grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub width: usize,
    pub height: usize,
    pub tile: usize,
    pub overlap: usize,
    /// Row by row, left to right.
    pub tiles: Vec<Tile>,
    /// The top of each row of tiles.
    pub row_tops: Vec<usize>,
}

/// Starts of tiles of `tile` along `len`, evenly spaced, neighbours overlapping by at least
/// `overlap`, the last ending at `len`.
fn starts(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if len <= tile {
        return vec![0];
    }
    let stride = (tile - overlap).max(1);
    let n = (len - tile).div_ceil(stride) + 1;
    (0..n)
        .map(|i| ((i * (len - tile)) as f64 / (n - 1) as f64).round() as usize)
        .collect()
}

impl Layout {
    pub fn new(width: usize, height: usize, tile: usize, overlap: usize) -> Self {
        assert!(tile > 0 && overlap < tile, "a tile larger than its overlap");
        let (xs, ys) = (starts(width, tile, overlap), starts(height, tile, overlap));
        let tiles = ys
            .iter()
            .enumerate()
            .flat_map(|(row, &y)| {
                xs.iter().map(move |&x| Tile {
                    x,
                    y,
                    w: tile.min(width),
                    h: tile.min(height),
                    row,
                })
            })
            .collect();
        Self {
            width,
            height,
            tile,
            overlap,
            tiles,
            row_tops: ys,
        }
    }

    /// The blending weights of `t` with every coordinate multiplied by `scale` (pixels of a
    /// layout made in latent units): `(t.w * scale) * (t.h * scale)` values, row-major, all
    /// above zero.
    pub fn window(&self, t: &Tile, scale: usize) -> Vec<f32> {
        let ramp = (self.overlap * scale).max(1) as f32;
        let along = |len: usize, before: bool, after: bool| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    let rise = |d: usize| smoothstep((d as f32 + 0.5) / ramp);
                    let a = if before { rise(i) } else { 1.0 };
                    let b = if after { rise(len - 1 - i) } else { 1.0 };
                    a.min(b)
                })
                .collect()
        };
        let (w, h) = (t.w * scale, t.h * scale);
        let wx = along(w, t.x > 0, t.x + t.w < self.width);
        let wy = along(h, t.y > 0, t.y + t.h < self.height);
        wy.iter()
            .flat_map(|&a| wx.iter().map(move |&b| a * b))
            .collect()
    }
}

fn smoothstep(t: f32) -> f32 {
    let t = t.clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Weighted sums of `c`-channel tiles over a whole `w x h` map (channel-major, as latents).
pub struct Blend {
    c: usize,
    w: usize,
    h: usize,
    sum: Vec<f32>,
    weight: Vec<f32>,
}

impl Blend {
    pub fn new(c: usize, w: usize, h: usize) -> Self {
        Self {
            c,
            w,
            h,
            sum: vec![0.0; c * w * h],
            weight: vec![0.0; w * h],
        }
    }

    /// Adds `data` (`c x t.h x t.w`, channel-major) at `t` with `window` (`t.h x t.w`).
    pub fn add(&mut self, t: &Tile, data: &[f32], window: &[f32]) {
        let plane = t.w * t.h;
        for ty in 0..t.h {
            for tx in 0..t.w {
                let (k, at) = (ty * t.w + tx, (t.y + ty) * self.w + t.x + tx);
                let wgt = window[k];
                self.weight[at] += wgt;
                for ch in 0..self.c {
                    self.sum[ch * self.w * self.h + at] += wgt * data[ch * plane + k];
                }
            }
        }
    }

    /// The weighted mean where some tile was added; `fallback` (same layout) elsewhere.
    pub fn mean(&self, fallback: Option<&[f32]>) -> Vec<f32> {
        let n = self.w * self.h;
        (0..self.c * n)
            .map(|i| {
                let wgt = self.weight[i % n];
                if wgt > 0.0 {
                    self.sum[i] / wgt
                } else {
                    fallback.map_or(0.0, |f| f[i])
                }
            })
            .collect()
    }
}

/// One row of [`Bands`]: RGB sums and weights.
struct Row {
    sum: Vec<f32>,
    weight: Vec<f32>,
}

/// Weighted sums of RGB pixel tiles (`h x w x 3`, pixel-major) that arrive row of tiles by row
/// of tiles: rows above the next row of tiles are finished and handed back, so memory holds
/// one band of rows, whatever the photo's height.
pub struct Bands {
    w: usize,
    /// The photo row of `rows[0]`.
    top: usize,
    rows: VecDeque<Row>,
}

impl Bands {
    pub fn new(w: usize) -> Self {
        Self {
            w,
            top: 0,
            rows: VecDeque::new(),
        }
    }

    /// Adds a `tw x th` RGB tile at photo position `(x, y)` (never above a finished row).
    pub fn add(&mut self, x: usize, y: usize, tw: usize, th: usize, rgb: &[f32], window: &[f32]) {
        assert!(y >= self.top, "a tile above the finished rows");
        while self.top + self.rows.len() < y + th {
            self.rows.push_back(Row {
                sum: vec![0.0; self.w * 3],
                weight: vec![0.0; self.w],
            });
        }
        for ty in 0..th {
            let row = &mut self.rows[y + ty - self.top];
            for tx in 0..tw {
                let k = ty * tw + tx;
                let wgt = window[k];
                row.weight[x + tx] += wgt;
                for c in 0..3 {
                    row.sum[(x + tx) * 3 + c] += wgt * rgb[k * 3 + c];
                }
            }
        }
    }

    /// Hands `emit(row, rgb)` every row above `y` (no later tile reaches it), as 8-bit RGB.
    pub fn finish_above(&mut self, y: usize, emit: &mut dyn FnMut(usize, &[u8])) {
        let mut line = vec![0u8; self.w * 3];
        while self.top < y {
            let Some(row) = self.rows.pop_front() else {
                break;
            };
            for (i, px) in line.iter_mut().enumerate() {
                let wgt = row.weight[i / 3];
                *px = if wgt > 0.0 {
                    super::to_u8(row.sum[i] / wgt)
                } else {
                    0
                };
            }
            emit(self.top, &line);
            self.top += 1;
        }
    }

    /// Rows held now (for tests of the bound).
    pub fn held(&self) -> usize {
        self.rows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_grid_and_overlap_enough() {
        let l = Layout::new(100, 40, 32, 8);
        let xs: Vec<usize> = l.tiles.iter().filter(|t| t.row == 0).map(|t| t.x).collect();
        assert_eq!(*xs.first().unwrap(), 0);
        assert_eq!(xs.last().unwrap() + 32, 100);
        assert!(xs.windows(2).all(|p| p[0] + 32 >= p[1] + 8), "{xs:?}");
        assert_eq!(l.row_tops, vec![0, 8]);
        // A grid smaller than a tile is one tile of the grid's size.
        let small = Layout::new(20, 10, 32, 8);
        assert_eq!(
            small.tiles,
            vec![Tile {
                x: 0,
                y: 0,
                w: 20,
                h: 10,
                row: 0
            }]
        );
    }

    #[test]
    fn blending_a_constant_gives_it_back_and_windows_ramp() {
        let l = Layout::new(70, 50, 32, 8);
        let mut b = Blend::new(2, 70, 50);
        for t in &l.tiles {
            let win = l.window(t, 1);
            assert!(win.iter().all(|&v| v > 0.0 && v <= 1.0));
            b.add(t, &vec![3.0; 2 * t.w * t.h], &win);
        }
        assert!(b.mean(None).iter().all(|&v| (v - 3.0).abs() < 1e-5));
        // A tile's weight rises from an inner side, not from the photo's border.
        let t = l.tiles[0];
        let win = l.window(&t, 1);
        assert_eq!(win[0], 1.0);
        assert!(win[31] < 0.05);
    }

    #[test]
    fn bands_hand_back_finished_rows_and_hold_one_band() {
        let (w, h, tile) = (40, 100, 16);
        let l = Layout::new(w, h, tile, 4);
        let mut bands = Bands::new(w);
        let mut got = vec![None; h];
        let mut most = 0;
        for r in 0..l.row_tops.len() {
            for t in l.tiles.iter().filter(|t| t.row == r) {
                let rgb = vec![(t.y % 7) as f32 * 10.0; t.w * t.h * 3];
                bands.add(t.x, t.y, t.w, t.h, &rgb, &vec![1.0; t.w * t.h]);
            }
            most = most.max(bands.held());
            let next = l.row_tops.get(r + 1).copied().unwrap_or(h);
            bands.finish_above(next, &mut |y, line| got[y] = Some(line[0]));
        }
        assert!(got.iter().all(|g| g.is_some()));
        assert!(most <= 2 * tile, "held {most} rows");
    }
}
