//! COCO run-length encoding of binary masks, identical to pycocotools' `mask.encode`,
//! `area`, `toBbox` and the compressed `counts` string (`rleToString` / `rleFrString` in
//! cocodataset/cocoapi `maskApi.c`).
//!
//! Runs are counted in column-major order (pixel `(x, y)` at `y + h * x`), starting with a run of
//! zeros (possibly empty).

/// A run-length encoded mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    pub height: usize,
    pub width: usize,
    pub counts: Vec<u32>,
}

/// Why a compressed RLE string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RleError {
    #[error("invalid character {0:?} in an RLE string")]
    BadChar(char),
    #[error("RLE runs cover {covered} pixels, the mask has {expected}")]
    WrongLength { covered: u64, expected: u64 },
}

impl Rle {
    /// Encodes a row-major `width x height` mask.
    pub fn encode(mask: &[bool], width: usize, height: usize) -> Self {
        assert_eq!(
            mask.len(),
            width * height,
            "mask size matches its dimensions"
        );
        let mut counts = Vec::new();
        let (mut current, mut run) = (false, 0u32);
        for x in 0..width {
            for y in 0..height {
                let v = mask[y * width + x];
                if v != current {
                    counts.push(run);
                    run = 0;
                    current = v;
                }
                run += 1;
            }
        }
        counts.push(run);
        Self {
            height,
            width,
            counts,
        }
    }

    /// The row-major mask.
    pub fn decode(&self) -> Vec<bool> {
        let mut out = vec![false; self.width * self.height];
        let mut idx = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            if i % 2 == 1 {
                for k in idx..idx + c as usize {
                    let (x, y) = (k / self.height, k % self.height);
                    if x < self.width {
                        out[y * self.width + x] = true;
                    }
                }
            }
            idx += c as usize;
        }
        out
    }

    /// Number of set pixels.
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// `[x, y, w, h]` of the set pixels (all zeros when empty), as pycocotools' `toBbox`.
    pub fn bbox(&self) -> [f64; 4] {
        let h = self.height as u64;
        let (mut xs, mut ys, mut xe, mut ye) = (u64::MAX, u64::MAX, 0u64, 0u64);
        let mut idx = 0u64;
        let mut any = false;
        for (i, &c) in self.counts.iter().enumerate() {
            let c = c as u64;
            if i % 2 == 1 && c > 0 {
                any = true;
                let (start, end) = (idx, idx + c - 1);
                let (x0, x1) = (start / h, end / h);
                xs = xs.min(x0);
                xe = xe.max(x1);
                if x0 == x1 {
                    ys = ys.min(start % h);
                    ye = ye.max(end % h);
                } else {
                    // The run wraps a column: it spans every row.
                    ys = 0;
                    ye = h - 1;
                }
            }
            idx += c;
        }
        if !any {
            return [0.0; 4];
        }
        [
            xs as f64,
            ys as f64,
            (xe - xs + 1) as f64,
            (ye - ys + 1) as f64,
        ]
    }

    /// The compressed `counts` string of COCO JSON.
    pub fn to_coco_string(&self) -> String {
        let mut s = String::new();
        for (i, &c) in self.counts.iter().enumerate() {
            let mut x = c as i64;
            if i > 2 {
                x -= self.counts[i - 2] as i64;
            }
            loop {
                let mut c = (x & 0x1f) as u8;
                x >>= 5;
                let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                s.push((c + 48) as char);
                if !more {
                    break;
                }
            }
        }
        s
    }

    /// Reads a compressed `counts` string for a `width x height` mask.
    pub fn from_coco_string(s: &str, width: usize, height: usize) -> Result<Self, RleError> {
        let bytes = s.as_bytes();
        let mut counts: Vec<i64> = Vec::new();
        let mut p = 0;
        while p < bytes.len() {
            let (mut x, mut k) = (0i64, 0u32);
            loop {
                let b = bytes[p];
                if !(48..48 + 64).contains(&b) {
                    return Err(RleError::BadChar(b as char));
                }
                let c = (b - 48) as i64;
                x |= (c & 0x1f) << (5 * k);
                p += 1;
                k += 1;
                let more = c & 0x20 != 0;
                if !more {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
                if p >= bytes.len() {
                    return Err(RleError::BadChar('\0'));
                }
            }
            if counts.len() > 2 {
                x += counts[counts.len() - 2];
            }
            counts.push(x);
        }
        let covered: i64 = counts.iter().sum();
        let expected = (width * height) as u64;
        if counts.iter().any(|&c| c < 0) || covered as u64 != expected {
            return Err(RleError::WrongLength {
                covered: covered.max(0) as u64,
                expected,
            });
        }
        Ok(Self {
            height,
            width,
            counts: counts.into_iter().map(|c| c as u32).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        height: usize,
        width: usize,
        rows: Vec<String>,
        /// Given for the small cases only.
        rle_counts: Option<Vec<u32>>,
        coco_string: String,
        area: u64,
        bbox: [f64; 4],
    }

    /// Every vector of `../shared/reference/rle_vectors.json` (computed with pycocotools).
    #[test]
    fn matches_pycocotools_vectors() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/reference/rle_vectors.json");
        let text = std::fs::read_to_string(&path).expect("the shared RLE vectors are readable");
        #[derive(serde::Deserialize)]
        struct File {
            cases: Vec<Case>,
        }
        let file: File = serde_json::from_str(&text).expect("vectors parse");
        assert!(file.cases.len() >= 5);
        for c in file.cases {
            let mask: Vec<bool> = c
                .rows
                .iter()
                .flat_map(|r| r.bytes().map(|b| b == b'1'))
                .collect();
            let rle = Rle::encode(&mask, c.width, c.height);
            if let Some(counts) = &c.rle_counts {
                assert_eq!(&rle.counts, counts, "{}: counts", c.name);
            }
            assert_eq!(rle.to_coco_string(), c.coco_string, "{}: string", c.name);
            assert_eq!(rle.area(), c.area, "{}: area", c.name);
            assert_eq!(rle.bbox(), c.bbox, "{}: bbox", c.name);
            let back = Rle::from_coco_string(&c.coco_string, c.width, c.height).expect("decodes");
            assert_eq!(back, rle, "{}: string round trip", c.name);
            assert_eq!(back.decode(), mask, "{}: mask round trip", c.name);
        }
    }

    #[test]
    fn bad_strings_are_errors() {
        assert!(matches!(
            Rle::from_coco_string("4 1", 4, 3),
            Err(RleError::BadChar(' '))
        ));
        assert!(matches!(
            Rle::from_coco_string("41", 4, 3),
            Err(RleError::WrongLength {
                covered: 5,
                expected: 12
            })
        ));
    }
}
