//! YOLO detection labels: one line per box, `class cx cy w h`, normalised to the image size;
//! class ids index a `classes.txt` that grows as new categories appear, so ids stay stable
//! across the images of a folder.

use crate::decode::Decoded;

/// Lines for `decoded`'s boxes; new category names are appended to `classes`.
pub fn lines(decoded: &Decoded, classes: &mut Vec<String>) -> String {
    let (w, h) = (decoded.width as f64, decoded.height as f64);
    let mut out = String::new();
    for inst in &decoded.instances {
        let id = classes
            .iter()
            .position(|c| *c == inst.category)
            .unwrap_or_else(|| {
                classes.push(inst.category.clone());
                classes.len() - 1
            });
        let [x, y, bw, bh] = inst.bbox;
        out.push_str(&format!(
            "{id} {:.6} {:.6} {:.6} {:.6}\n",
            (x + bw / 2.0) / w,
            (y + bh / 2.0) / h,
            bw / w,
            bh / h
        ));
    }
    out
}

/// Reads a `classes.txt` (one name per line); a missing file is an empty list.
pub fn read_classes(path: &std::path::Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e),
    }
}
