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
    let p = (k - 1) / 2;
    let wp = w + 2 * p;
    let bh = r1 - r0 + 2 * p;
    let plane = bh * wp;
    let mut padded = vec![0f32; c * (plane + tail)];
    for ci in 0..c {
        let src = &x[(bi * c + ci) * h * w..][..h * w];
        for rr in 0..bh {
            let Some(iy) = (r0 + rr).checked_sub(p).filter(|&iy| iy < h) else {
                continue;
            };
            padded[ci * (plane + tail) + rr * wp + p..][..w].copy_from_slice(&src[iy * w..][..w]);
        }
    }
    (padded, plane)
}
