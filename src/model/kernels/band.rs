//! The padded input rows both row-band convolutions ([`super::shifted_conv`],
//! [`super::direct_conv`]) start from.

/// Input rows `r0 - p .. r1 + p` of image `bi` of `x (b, c, h, w)` (`p = (k - 1) / 2`),
/// zero-padded by `p` on every side (rows `w + 2p` long), each channel's `plane` followed by
/// `tail` zeros. Returns `(padded, plane)`.
pub fn padded_band(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    k: usize,
    (bi, r0, r1): (usize, usize, usize),
    tail: usize,
) -> (Vec<f32>, usize) {
    padded_window(x, (c, h, w), k, (bi, r0, r1), (0, w), tail)
}

/// [`padded_band`] over columns `x0 - p .. x1 + p` only (rows `x1 - x0 + 2p` long, zeros
/// outside the image): the input a block of outputs in columns `x0..x1` reads.
pub fn padded_window(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    k: usize,
    (bi, r0, r1): (usize, usize, usize),
    (x0, x1): (usize, usize),
    tail: usize,
) -> (Vec<f32>, usize) {
    let p = (k - 1) / 2;
    let wp = x1 - x0 + 2 * p;
    let bh = r1 - r0 + 2 * p;
    let plane = bh * wp;
    // The columns of a row that lie in the image, and the zeros on either side of them.
    let (from, to) = (x0.saturating_sub(p), (x1 + p).min(w));
    let (left, right) = (p.saturating_sub(x0), x1 + p - to);
    // Written in order, the zeros where the padding is (no zero fill of what is copied).
    let mut padded = Vec::with_capacity(c * (plane + tail));
    let zeros = |v: &mut Vec<f32>, n: usize| v.resize(v.len() + n, 0.);
    for ci in 0..c {
        let src = &x[(bi * c + ci) * h * w..][..h * w];
        for rr in 0..bh {
            match (r0 + rr).checked_sub(p).filter(|&iy| iy < h) {
                Some(iy) => {
                    zeros(&mut padded, left);
                    padded.extend_from_slice(&src[iy * w + from..iy * w + to]);
                    zeros(&mut padded, right);
                }
                None => zeros(&mut padded, wp),
            }
        }
        zeros(&mut padded, tail);
    }
    (padded, plane)
}
