//! PNG masks: one binary PNG per instance (0 / 255) and an indexed label map (`labels.png`:
//! pixel value = instance number, 0 = background, palette = each instance's overlay colour),
//! with `labels.json` naming each number's category and score.

use std::path::{Path, PathBuf};

use crate::decode::Decoded;
use crate::imageio::{write_atomic, ImageError};

fn encode(
    w: usize,
    h: usize,
    data: &[u8],
    palette: Option<Vec<u8>>,
) -> Result<Vec<u8>, ImageError> {
    let mut bytes = vec![];
    {
        let mut enc = png::Encoder::new(&mut bytes, w as u32, h as u32);
        match palette {
            Some(p) => {
                enc.set_color(png::ColorType::Indexed);
                enc.set_palette(p);
            }
            None => enc.set_color(png::ColorType::Grayscale),
        }
        enc.set_depth(png::BitDepth::Eight);
        let err = |e: png::EncodingError| ImageError::Write {
            path: PathBuf::from("<png>"),
            msg: e.to_string(),
        };
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(data).map_err(err)?;
    }
    Ok(bytes)
}

/// File-name-safe form of a category.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes the masks of `decoded` into `dir` (created), names prefixed with `stem`; returns
/// the files written. Each file is written atomically.
pub fn write(decoded: &Decoded, dir: &Path, stem: &str) -> Result<Vec<PathBuf>, ImageError> {
    std::fs::create_dir_all(dir).map_err(|e| ImageError::Write {
        path: dir.to_path_buf(),
        msg: e.to_string(),
    })?;
    let (w, h) = (decoded.width, decoded.height);
    let mut written = vec![];
    let mut labels = vec![0u8; w * h];
    let mut palette = vec![0u8, 0, 0];
    let mut index = vec![];
    for (i, inst) in decoded.instances.iter().enumerate().take(255) {
        let n = i + 1;
        let data: Vec<u8> = inst.mask.iter().map(|m| if *m { 255 } else { 0 }).collect();
        let path = dir.join(format!("{stem}_{n:03}_{}.png", slug(&inst.category)));
        write_atomic(&path, &encode(w, h, &data, None)?)?;
        written.push(path);
        inst.mask
            .iter()
            .zip(labels.iter_mut())
            .filter(|(m, _)| **m)
            .for_each(|(_, l)| *l = n as u8);
        palette.extend_from_slice(&inst.color);
        index.push(serde_json::json!({"value": n, "category": inst.category, "phrase": inst.phrase, "score": inst.score}));
    }
    let path = dir.join(format!("{stem}_labels.png"));
    write_atomic(&path, &encode(w, h, &labels, Some(palette))?)?;
    written.push(path);
    let path = dir.join(format!("{stem}_labels.json"));
    let json = serde_json::to_string_pretty(&index).expect("plain JSON");
    write_atomic(&path, json.as_bytes())?;
    written.push(path);
    Ok(written)
}
