//! The decoder against its quality set (real photos, synthetic overlays, perturbed).

use instructdiffusion::decode::quality::{self, Perturb};

fn photos() -> Vec<image::RgbImage> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples");
    ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|f| image::open(dir.join(f)).unwrap().to_rgb8())
        .collect()
}

#[test]
fn quality_set_meets_the_targets_at_512() {
    let r = quality::run(&photos(), 6, 512, &Perturb::STANDARD, 7);
    eprintln!("{r:#?}");
    assert!(r.mean_iou >= 0.95, "{r:#?}");
    assert!(r.keypoints_found as f64 >= 0.99 * r.keypoints as f64, "{r:#?}");
    assert!(r.mean_keypoint_error_px <= 1.5, "{r:#?}");
    assert!(r.false_positives as f64 <= 0.01 * r.untouched as f64, "{r:#?}");
}
