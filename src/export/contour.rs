//! Mask outlines as polygons (for Labelme): the outer boundary of a component traced along
//! pixel edges (8-connected: diagonal neighbours stay in one outline), then simplified with
//! Douglas-Peucker. Vertices are pixel corners, so a pixel is inside the polygon exactly when
//! its centre is (before simplification). Holes are not traced.

/// The outer outline of the 8-connected component containing the first set pixel in raster
/// order at or after `start`, as corner coordinates, clockwise (y down).
fn trace(mask: &[bool], w: usize, h: usize, start: usize) -> Vec<(f64, f64)> {
    let inside = |x: i64, y: i64| {
        x >= 0 && y >= 0 && x < w as i64 && y < h as i64 && mask[y as usize * w + x as usize]
    };
    let (sx, sy) = ((start % w) as i64, (start / w) as i64);
    // Directions E, S, W, N (y down); the inside is on the right of travel.
    const D: [(i64, i64); 4] = [(1, 0), (0, 1), (-1, 0), (0, -1)];
    let (mut x, mut y, mut d) = (sx, sy, 0usize);
    let mut pts = vec![(sx as f64, sy as f64)];
    loop {
        x += D[d].0;
        y += D[d].1;
        // The two pixels ahead of corner (x, y) in direction d: left and right of travel.
        let (left, right) = match d {
            0 => ((x, y - 1), (x, y)),
            1 => ((x, y), (x - 1, y)),
            2 => ((x - 1, y), (x - 1, y - 1)),
            _ => ((x - 1, y - 1), (x, y - 1)),
        };
        let nd = if inside(left.0, left.1) {
            (d + 3) % 4
        } else if inside(right.0, right.1) {
            d
        } else {
            (d + 1) % 4
        };
        if (x, y, nd) == (sx, sy, 0) {
            break;
        }
        if nd != d {
            pts.push((x as f64, y as f64));
        }
        d = nd;
    }
    pts
}

/// Distance from `p` to the segment `a`-`b`.
fn seg_dist(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    };
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

fn douglas_peucker(pts: &[(f64, f64)], eps: f64, out: &mut Vec<(f64, f64)>) {
    if pts.len() < 3 {
        out.extend_from_slice(&pts[..pts.len().saturating_sub(1)]);
        return;
    }
    let (a, b) = (pts[0], pts[pts.len() - 1]);
    let (i, dmax) = pts[1..pts.len() - 1]
        .iter()
        .enumerate()
        .map(|(i, p)| (i + 1, seg_dist(*p, a, b)))
        .fold((0, 0.0), |m, c| if c.1 > m.1 { c } else { m });
    if dmax > eps {
        douglas_peucker(&pts[..=i], eps, out);
        douglas_peucker(&pts[i..], eps, out);
    } else {
        out.push(a);
    }
}

/// The outlines of every 8-connected component of `mask`, each simplified to within `eps`
/// pixels (0 keeps every corner).
pub fn polygons(mask: &[bool], w: usize, h: usize, eps: f64) -> Vec<Vec<(f64, f64)>> {
    let (labels, _) = crate::decode::raster::components(mask, w, h);
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![];
    for (i, &l) in labels.iter().enumerate() {
        if l == 0 || !seen.insert(l) {
            continue;
        }
        let ring = trace(mask, w, h, i);
        if eps <= 0.0 || ring.len() < 4 {
            out.push(ring);
            continue;
        }
        // Split the closed ring at its farthest vertex from the start, simplify both halves.
        let far = (1..ring.len())
            .max_by(|&a, &b| {
                let d = |p: (f64, f64)| (p.0 - ring[0].0).powi(2) + (p.1 - ring[0].1).powi(2);
                d(ring[a]).total_cmp(&d(ring[b]))
            })
            .unwrap();
        let mut simple = vec![];
        douglas_peucker(&ring[..=far], eps, &mut simple);
        let mut back: Vec<_> = ring[far..].to_vec();
        back.push(ring[0]);
        douglas_peucker(&back, eps, &mut simple);
        out.push(simple);
    }
    out
}

/// Whether the point lies inside the polygon (even-odd rule).
pub fn contains(poly: &[(f64, f64)], x: f64, y: f64) -> bool {
    let mut inside = false;
    let n = poly.len();
    for i in 0..n {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raster(polys: &[Vec<(f64, f64)>], w: usize, h: usize) -> Vec<bool> {
        (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f64 + 0.5, (i / w) as f64 + 0.5);
                polys.iter().any(|p| contains(p, x, y))
            })
            .collect()
    }

    #[test]
    fn outlines_rasterise_back_to_the_mask() {
        let (w, h) = (40, 30);
        let mask: Vec<bool> = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f64, (i / w) as f64);
                // A disc, a diagonal pair of pixels and an L shape.
                (x - 12.0).powi(2) + (y - 12.0).powi(2) < 64.0
                    || (x, y) == (30.0, 3.0)
                    || (x, y) == (31.0, 4.0)
                    || ((28.0..36.0).contains(&x)
                        && (15.0..27.0).contains(&y)
                        && !(x >= 31.0 && y < 24.0))
            })
            .collect();
        let exact = polygons(&mask, w, h, 0.0);
        assert_eq!(exact.len(), 3);
        assert_eq!(raster(&exact, w, h), mask);
        let square = polygons(&[true; 4], 2, 2, 0.0);
        assert_eq!(
            square,
            vec![vec![(0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (0.0, 2.0)]]
        );
        let simple = polygons(&mask, w, h, 1.0);
        let back = raster(&simple, w, h);
        let diff = back.iter().zip(&mask).filter(|(a, b)| a != b).count();
        let area = mask.iter().filter(|m| **m).count();
        assert!(diff * 10 < area, "{diff} of {area}");
        assert!(simple[0].len() < exact[0].len());
    }
}
