//! Input images of every kind a user may drop in: odd pixel formats, rotated phone photos,
//! corrupt and oversized files.

mod util;

use instructdiffusion::imageio::{load_rgb, ImageError, DEFAULT_MAX_PIXELS};
use util::*;

#[test]
fn cmyk_jpeg_decodes_like_pil() {
    let dir = fixtures().join("images");
    let got = load_rgb(&dir.join("cmyk.jpg"), DEFAULT_MAX_PIXELS).unwrap();
    let want = image::open(dir.join("cmyk_as_pil_sees_it.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(got.dimensions(), want.dimensions());
    let mae = mean_abs_diff(got.as_raw(), want.as_raw());
    assert!(
        mae < 3.0,
        "CMYK decode differs from PIL's by {mae:.2} levels on average"
    );
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 48x32, left half red, right half blue, with orientation 6 (rotate 90 clockwise).
    let img = load_rgb(
        &fixtures().join("images/exif_rotate_90.jpg"),
        DEFAULT_MAX_PIXELS,
    )
    .unwrap();
    assert_eq!(img.dimensions(), (32, 48));
    let top = img.get_pixel(16, 6).0;
    let bottom = img.get_pixel(16, 42).0;
    assert!(top[0] > 200 && top[2] < 60, "top should be red: {top:?}");
    assert!(
        bottom[2] > 200 && bottom[0] < 60,
        "bottom should be blue: {bottom:?}"
    );
}

#[test]
fn sixteen_bit_grayscale_and_alpha_convert() {
    let tmp = tempdir();
    let p16 = tmp.path().join("g16.png");
    image::ImageBuffer::<image::Luma<u16>, _>::from_pixel(5, 4, image::Luma([32896u16]))
        .save(&p16)
        .unwrap();
    let img = load_rgb(&p16, DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(img.dimensions(), (5, 4));
    assert_eq!(img.get_pixel(0, 0).0, [128, 128, 128]);
    let pa = tmp.path().join("rgba.png");
    let mut rgba = image::RgbaImage::from_pixel(2, 1, image::Rgba([0, 0, 255, 255]));
    rgba.put_pixel(1, 0, image::Rgba([0, 0, 0, 0]));
    rgba.save(&pa).unwrap();
    let img = load_rgb(&pa, DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(img.get_pixel(0, 0).0, [0, 0, 255]);
    assert_eq!(
        img.get_pixel(1, 0).0,
        [255, 255, 255],
        "transparent pixels become white"
    );
    let pg = tmp.path().join("g8.jpg");
    image::GrayImage::from_pixel(8, 8, image::Luma([200]))
        .save(&pg)
        .unwrap();
    let px = load_rgb(&pg, DEFAULT_MAX_PIXELS).unwrap().get_pixel(3, 3).0;
    assert!(px.iter().all(|&v| (v as i32 - 200).abs() <= 2), "{px:?}");
}

#[test]
fn truncated_files_give_a_clear_error() {
    let tmp = tempdir();
    let bytes = std::fs::read(tiny().join("input.png")).unwrap();
    let p = tmp.path().join("cut.png");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_rgb(&p, DEFAULT_MAX_PIXELS).unwrap_err().to_string();
    assert!(
        err.contains("cut.png") && err.contains("truncated or corrupt"),
        "{err}"
    );
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG whose header claims 100000 x 100000 pixels (a decompression bomb) is refused from
/// its header, before any pixel memory is allocated.
#[test]
fn huge_images_are_refused_before_decoding() {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    for (kind, data) in [
        (&b"IDAT"[..], &b"\x78\x9c\x03\x00\x00\x00\x00\x01"[..]),
        (b"IEND", b""),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    let tmp = tempdir();
    let p = tmp.path().join("bomb.png");
    std::fs::write(&p, &png).unwrap();
    match load_rgb(&p, DEFAULT_MAX_PIXELS) {
        Err(ImageError::TooLarge { width, height, .. }) => {
            assert_eq!((width, height), (100_000, 100_000))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}
