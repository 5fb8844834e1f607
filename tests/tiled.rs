//! Enhancement at the photo's own resolution in tiles: no seams where tiles meet, and the
//! memory a run needs beyond the photo does not grow with the photo.
//!
//! One test in its own binary: it counts every allocation (a counting global allocator), so
//! nothing else may run beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::RgbImage;
use instructdiffusion::fullres::bench::noisy_photo;
use instructdiffusion::fullres::Applied;
use instructdiffusion::model::load::{self, LoadOptions, ModelSource};
use instructdiffusion::sample::pipeline::{self, EditOutcome, EditRequest};
use instructdiffusion::sample::tiled;

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Mean step between neighbouring columns (`cols`) or rows at each position 1..len.
fn steps(img: &RgbImage, cols: bool) -> Vec<f64> {
    let (w, h) = img.dimensions();
    let (len, across) = if cols { (w, h) } else { (h, w) };
    (1..len)
        .map(|i| {
            let mut sum = 0f64;
            for j in 0..across {
                let (a, b) = if cols {
                    (img.get_pixel(i - 1, j), img.get_pixel(i, j))
                } else {
                    (img.get_pixel(j, i - 1), img.get_pixel(j, i))
                };
                sum += (0..3).map(|c| a[c].abs_diff(b[c]) as f64).sum::<f64>();
            }
            sum / (3 * across) as f64
        })
        .collect()
}

#[test]
fn tiled_enhancement_has_no_seams_and_bounded_memory() {
    let model = load::load(&ModelSource::Builtin, LoadOptions::default()).unwrap();
    let request = EditRequest {
        prompt: "Remove the noise.".into(),
        seed: Some(3),
        steps: Some(1),
        ..Default::default()
    };
    let plan = request.validate(&model).unwrap();
    let run = |w: u32, h: u32| {
        let photo = noisy_photo(w, h);
        let mut tiles_seen = 0;
        let before = NOW.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let outcome = pipeline::edit(&model, &photo, &plan, None, &mut |e| {
            if e.tile.is_some() {
                tiles_seen += 1;
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        let peak = PEAK.load(Ordering::Relaxed) - before;
        let EditOutcome::Done(e) = outcome else {
            panic!("not cancelled")
        };
        (photo, e, peak, tiles_seen)
    };

    let (_, small, small_peak, _) = run(1024, 512);
    let (photo, big, big_peak, tiles_seen) = run(2048, 512);
    let Applied::Tiled { tiles, tile, .. } = big.applied else {
        panic!(
            "an enhancement of a photo larger than the model runs tiled: {:?}",
            big.applied
        )
    };
    assert_eq!(tile, 128);
    assert_eq!(tiles_seen, tiles, "one progress event per tile");
    assert_eq!(big.image.dimensions(), photo.dimensions());
    assert!(big.model_image.is_none() && small.image.dimensions() == (1024, 512));

    // Seams: the steps across tile borders are no larger than those inside tiles.
    let (layout, f) = tiled::layout_for(&model, 2048, 512, plan.resolution);
    for cols in [true, false] {
        let s = steps(&big.image, cols);
        let mut borders = std::collections::BTreeSet::new();
        for t in &layout.tiles {
            let (a, len) = if cols { (t.x, t.w) } else { (t.y, t.h) };
            borders.insert(a * f);
            borders.insert((a + len) * f);
        }
        let at_border: Vec<f64> = borders
            .iter()
            .filter(|&&b| b > 0 && b < s.len())
            .map(|&b| s[b - 1])
            .collect();
        let inside = s
            .iter()
            .enumerate()
            .filter(|(i, _)| !borders.contains(&(i + 1)))
            .map(|(_, v)| *v)
            .fold(0f64, f64::max);
        let worst = at_border.iter().copied().fold(0f64, f64::max);
        assert!(
            !at_border.is_empty() && worst <= inside,
            "{} tile borders: largest step {worst:.2} levels, inside tiles {inside:.2}",
            if cols { "vertical" } else { "horizontal" }
        );
    }

    // Memory: doubling the photo adds only photo-sized buffers (the padded photo and the
    // result, 3 bytes a pixel each; latents, the sampler's copies and the tiles' sums, about
    // 2 bytes a pixel each at the built-in model's 8 channels / 16 pixels), never a network's
    // activations over the whole photo (hundreds of bytes a pixel).
    let added = (2048 * 512 - 1024 * 512) as f64;
    let per_pixel = (big_peak as f64 - small_peak as f64) / added;
    eprintln!(
        "peak beyond the photo: {:.1} MiB at 1024x512, {:.1} MiB at 2048x512 ({per_pixel:.1} bytes per added pixel)",
        small_peak as f64 / 1048576.0,
        big_peak as f64 / 1048576.0
    );
    assert!(
        per_pixel <= 40.0,
        "{per_pixel:.1} bytes per added pixel: something photo-sized is held"
    );

    // Cancel takes effect at the next tile, not at the end of the step.
    let mut seen = 0;
    let outcome = pipeline::edit(&model, &noisy_photo(1024, 512), &plan, None, &mut |e| {
        if e.tile.is_some() {
            seen += 1;
        }
        if seen >= 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert!(matches!(outcome, EditOutcome::Cancelled { at_step: 0 }));
    assert_eq!(seen, 3);
}
