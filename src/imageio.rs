//! Reading and writing images safely: bounded decoding, EXIF orientation, any pixel format to
//! RGB, the official resize rule, and atomic writes that never touch the source file.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

/// Default cap on decoded pixels (64 megapixels, about 8k x 8k).
pub const DEFAULT_MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Why an image could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("reading image '{path}': {msg}")]
    Read { path: PathBuf, msg: String },
    #[error("image '{path}' is {width}x{height} ({mp:.1} megapixels), over the limit of {limit_mp:.1} megapixels (raise it with --max-pixels, or downscale the image first)")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        mp: f64,
        limit_mp: f64,
    },
    #[error("writing '{path}': {msg}")]
    Write { path: PathBuf, msg: String },
    #[error("refusing to overwrite the source image '{0}': choose another output path")]
    WouldOverwriteSource(PathBuf),
}

/// Decodes `path` to RGB, honouring EXIF orientation, refusing images over `max_pixels`.
/// Transparent pixels are composited over white; 16-bit, grayscale and CMYK inputs convert.
pub fn load_rgb(path: &Path, max_pixels: u64) -> Result<RgbImage, ImageError> {
    let read_err = |msg: String| ImageError::Read {
        path: path.to_path_buf(),
        msg,
    };
    let mut reader = ImageReader::open(path)
        .map_err(|e| read_err(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| read_err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(read_err("unrecognised image format".into()));
    }
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 26));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| read_err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            width: w,
            height: h,
            mp: pixels as f64 / 1e6,
            limit_mp: max_pixels as f64 / 1e6,
        });
    }
    if pixels == 0 {
        return Err(read_err("the image is empty (0 pixels)".into()));
    }
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder)
        .map_err(|e| read_err(format!("{e} (is the file truncated or corrupt?)")))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(to_rgb_over_white(&img))
}

fn to_rgb_over_white(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = p[3] as u32;
        for k in 0..3 {
            o[k] = ((p[k] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// The model-resolution size of a `w x h` input (InstructDiffusion `edit_cli.py`): the long
/// side becomes `resolution`, the short side is rounded **up** to a multiple of 64, then each
/// side is floored to a multiple of 64. 1920x1080 -> 512x320 at 512.
pub fn fit_size(w: u32, h: u32, resolution: u32) -> (u32, u32) {
    let (w, h, r) = (w as f64, h as f64, resolution as f64);
    let factor = r / w.max(h);
    let short = w.min(h);
    let factor = (short * factor / 64.0).ceil() * 64.0 / short;
    let side = |s: f64| (((s * factor) / 64.0).floor() as u32 * 64).max(64);
    (side(w), side(h))
}

/// The centred crop of a `iw x ih` image that has the aspect of `w x h`: `(x, y, cw, ch)`
/// (PIL `ImageOps.fit`'s crop). [`fit`] resizes this crop to `w x h`.
pub fn fit_crop(iw: u32, ih: u32, w: u32, h: u32) -> (u32, u32, u32, u32) {
    let (in_ratio, out_ratio) = (iw as f64 / ih as f64, w as f64 / h as f64);
    let (cw, ch) = if (in_ratio - out_ratio).abs() < 1e-12 {
        (iw, ih)
    } else if in_ratio > out_ratio {
        (((out_ratio * ih as f64).round() as u32).clamp(1, iw), ih)
    } else {
        (iw, ((iw as f64 / out_ratio).round() as u32).clamp(1, ih))
    };
    ((iw - cw) / 2, (ih - ch) / 2, cw, ch)
}

/// Centre-crops `img` to the aspect of `w x h` and resizes it there with Lanczos
/// (PIL `ImageOps.fit`).
pub fn fit(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (x, y, cw, ch) = fit_crop(img.width(), img.height(), w, h);
    let cropped = image::imageops::crop_imm(img, x, y, cw, ch).to_image();
    if (cw, ch) == (w, h) {
        cropped
    } else {
        image::imageops::resize(&cropped, w, h, image::imageops::FilterType::Lanczos3)
    }
}

/// Resizes to exactly `w x h` with Lanczos (used to return results at the input's size).
pub fn resize_exact(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        img.clone()
    } else {
        image::imageops::resize(img, w, h, image::imageops::FilterType::Lanczos3)
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed and
/// synced, then renamed over `path`. On any failure (a full disk included) `path` is untouched
/// and the temporary file is removed. The file gets the permissions a plain `File::create`
/// would give it (0666 less the umask; a temporary file's own are 0600, owner only), or, when it
/// replaces a file, that file's.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let err = |msg: String| ImageError::Write {
        path: path.to_path_buf(),
        msg,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".instructdiffusion-").suffix(".tmp");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut tmp = builder.tempfile_in(&dir).map_err(|e| {
        err(format!(
            "creating a temporary file in '{}': {e}",
            dir.display()
        ))
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file()
            .set_permissions(meta.permissions())
            .map_err(|e| {
                err(format!(
                    "keeping the permissions of the file it replaces: {e}"
                ))
            })?;
    }
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| err(format!("{e} (is the disk full?)")))?;
    tmp.persist(path).map_err(|e| err(e.error.to_string()))?;
    Ok(())
}

/// Refuses an output path that is the source image itself.
pub fn check_not_source(out: &Path, source: &Path) -> Result<(), ImageError> {
    let same = match (out.canonicalize(), source.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        Err(ImageError::WouldOverwriteSource(out.to_path_buf()))
    } else {
        Ok(())
    }
}

/// Encodes an RGB image as PNG with `tEXt` chunks (`key`, `value`).
pub fn encode_png(img: &RgbImage, text: &[(&str, String)]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_itxt_chunk(k.to_string(), v.clone())
                .map_err(|e| e.to_string())?;
        }
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(img.as_raw())
            .map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Saves `img` to `path` (format from the extension; PNG gets the `text` metadata) atomically.
pub fn save(img: &RgbImage, path: &Path, text: &[(&str, String)]) -> Result<(), ImageError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let bytes = if ext == "png" || ext.is_empty() {
        encode_png(img, text).map_err(|msg| ImageError::Write {
            path: path.to_path_buf(),
            msg,
        })?
    } else {
        let format = image::ImageFormat::from_extension(&ext).ok_or_else(|| ImageError::Write {
            path: path.to_path_buf(),
            msg: format!("unknown image extension '.{ext}' (use .png, .jpg or .webp)"),
        })?;
        let mut buf = std::io::Cursor::new(Vec::new());
        img.write_to(&mut buf, format)
            .map_err(|e| ImageError::Write {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        buf.into_inner()
    };
    write_atomic(path, &bytes)
}

/// Image file extensions the folder scan picks up.
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"];

/// The images of `dir`, sorted by name.
pub fn list_images(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("reading the folder '{}': {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_lowercase().as_str()))
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of `../shared/reference/NOTES.md`.
    #[test]
    fn resize_rule_matches_the_official_cli() {
        assert_eq!(fit_size(1920, 1080, 512), (512, 320));
        assert_eq!(fit_size(640, 480, 512), (512, 384));
        assert_eq!(fit_size(512, 512, 512), (512, 512));
        // The short side rounds up, so the long side may pass the resolution (as officially).
        assert_eq!(fit_size(451, 300, 512), (576, 384));
        assert_eq!(fit_size(300, 451, 256), (192, 256));
    }

    #[test]
    fn fit_crops_to_the_aspect() {
        let mut img = RgbImage::new(200, 100);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([if !(50..150).contains(&x) { 255 } else { 0 }, 0, 0]);
        }
        // 1:1 output keeps the centre 100x100: all black.
        let out = fit(&img, 64, 64);
        assert_eq!(out.dimensions(), (64, 64));
        assert!(out.pixels().all(|p| p[0] < 10));
    }

    /// Written files are readable as a plain `File::create` leaves them (not the temporary
    /// file's owner-only 0600), and a replaced file keeps its permissions.
    #[cfg(unix)]
    #[test]
    fn written_files_get_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let ours = dir.path().join("ours.png");
        write_atomic(&ours, b"one").unwrap();
        assert_eq!(mode(&ours), mode(&plain));
        std::fs::set_permissions(&ours, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&ours, b"two").unwrap();
        assert_eq!(mode(&ours), 0o640);
        assert_eq!(std::fs::read(&ours).unwrap(), b"two");
    }

    #[test]
    fn alpha_is_composited_over_white() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            1,
            1,
            image::Rgba([0, 0, 0, 0]),
        ));
        assert_eq!(to_rgb_over_white(&img).get_pixel(0, 0).0, [255, 255, 255]);
    }
}
