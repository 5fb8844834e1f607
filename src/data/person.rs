//! Stick-figure people with the 17 COCO keypoints, in random poses.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::color::Color;

/// The 17 COCO keypoints, in COCO order.
pub const KEYPOINT_NAMES: [&str; 17] = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
];

/// Limbs drawn between keypoints (COCO skeleton without the face).
const LIMBS: [(usize, usize); 12] = [
    (5, 6),
    (5, 7),
    (7, 9),
    (6, 8),
    (8, 10),
    (5, 11),
    (6, 12),
    (11, 12),
    (11, 13),
    (13, 15),
    (12, 14),
    (14, 16),
];

/// A stick-figure person facing the viewer (its left is the image's right, as in COCO).
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub joints: [(f32, f32); 17],
    pub color: Color,
    pub thickness: f32,
    pub head_radius: f32,
}

impl Person {
    /// A person standing at `(cx, feet_y)`, `height` px tall, with a random pose.
    pub fn random(rng: &mut ChaCha8Rng, cx: f32, top: f32, height: f32, color: Color) -> Self {
        let h = height;
        let head_r = 0.09 * h;
        let head = (cx, top + head_r);
        let neck_y = top + 2.0 * head_r + 0.02 * h;
        let sh_w = 0.13 * h;
        let hip_y = neck_y + 0.33 * h;
        let hip_w = 0.08 * h;
        let mut j = [(0f32, 0f32); 17];
        j[0] = (head.0, head.1 + 0.2 * head_r);
        j[1] = (head.0 + 0.35 * head_r, head.1 - 0.2 * head_r);
        j[2] = (head.0 - 0.35 * head_r, head.1 - 0.2 * head_r);
        j[3] = (head.0 + 0.9 * head_r, head.1);
        j[4] = (head.0 - 0.9 * head_r, head.1);
        j[5] = (cx + sh_w, neck_y);
        j[6] = (cx - sh_w, neck_y);
        j[11] = (cx + hip_w, hip_y);
        j[12] = (cx - hip_w, hip_y);
        let limb = |from: (f32, f32), angle: f32, len: f32| {
            (from.0 + angle.sin() * len, from.1 + angle.cos() * len)
        };
        let arm = 0.16 * h;
        let leg = 0.2 * h;
        // Angles from straight down; positive swings towards the image's right.
        let la = rng.random_range(-0.3f32..2.6);
        let ra = -rng.random_range(-0.3f32..2.6);
        j[7] = limb(j[5], la, arm);
        j[9] = limb(j[7], la + rng.random_range(-1.0f32..1.0), arm);
        j[8] = limb(j[6], ra, arm);
        j[10] = limb(j[8], ra + rng.random_range(-1.0f32..1.0), arm);
        let ll = rng.random_range(0.0f32..0.5);
        let rl = -rng.random_range(0.0f32..0.5);
        j[13] = limb(j[11], ll, leg);
        j[15] = limb(j[13], ll * 0.5, leg);
        j[14] = limb(j[12], rl, leg);
        j[16] = limb(j[14], rl * 0.5, leg);
        Self {
            joints: j,
            color,
            thickness: (0.035 * h).max(1.5),
            head_radius: head_r,
        }
    }

    fn head_center(&self) -> (f32, f32) {
        let (a, b) = (self.joints[3], self.joints[4]);
        ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0)
    }

    /// Whether the point lies on the figure (head disc or a limb).
    pub fn contains(&self, px: f32, py: f32) -> bool {
        let (hx, hy) = self.head_center();
        if (px - hx).powi(2) + (py - hy).powi(2) <= self.head_radius.powi(2) {
            return true;
        }
        let neck = (
            (self.joints[5].0 + self.joints[6].0) / 2.0,
            (self.joints[5].1 + self.joints[6].1) / 2.0,
        );
        let hips = (
            (self.joints[11].0 + self.joints[12].0) / 2.0,
            (self.joints[11].1 + self.joints[12].1) / 2.0,
        );
        let segs = LIMBS
            .iter()
            .map(|&(a, b)| (self.joints[a], self.joints[b]))
            .chain([(neck, hips), ((hx, hy), neck)]);
        for (a, b) in segs {
            if dist_to_segment(px, py, a, b) <= self.thickness {
                return true;
            }
        }
        false
    }

    /// Horizontal centre (for "the person on the left").
    pub fn cx(&self) -> f32 {
        self.head_center().0
    }
}

fn dist_to_segment(px: f32, py: f32, a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((px - a.0 - t * dx).powi(2) + (py - a.1 - t * dy).powi(2)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::scene::OBJECT_COLORS;
    use rand::SeedableRng;

    #[test]
    fn person_covers_joints() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let p = Person::random(&mut rng, 60.0, 10.0, 100.0, OBJECT_COLORS[4]);
        for (i, &(x, y)) in p.joints.iter().enumerate().skip(5) {
            assert!(p.contains(x, y), "joint {}", KEYPOINT_NAMES[i]);
        }
        assert!(
            p.joints[5].0 > p.joints[6].0,
            "left shoulder is on the image's right"
        );
    }
}
