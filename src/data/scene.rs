//! Procedural scenes: shapes and stick-figure people over varied backgrounds, rendered with
//! anti-aliasing, with the visible (after occlusion) mask of every item.
//!
//! Everything is a pure function of the scene description, which is drawn from a seed, so a
//! sample can be regenerated anywhere from its seed alone.

use image::{Rgb, RgbImage};

pub(crate) use super::color::c;
pub use super::color::{Color, OBJECT_COLORS};
pub use super::person::{Person, KEYPOINT_NAMES};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The kinds of shapes in a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShapeKind {
    Circle,
    Square,
    Triangle,
    Star,
    Heart,
    Diamond,
}

impl ShapeKind {
    pub const ALL: [ShapeKind; 6] = [
        Self::Circle,
        Self::Square,
        Self::Triangle,
        Self::Star,
        Self::Heart,
        Self::Diamond,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Circle => "circle",
            Self::Square => "square",
            Self::Triangle => "triangle",
            Self::Star => "star",
            Self::Heart => "heart",
            Self::Diamond => "diamond",
        }
    }

    pub fn plural(self) -> String {
        format!("{}s", self.name())
    }
}

/// How a shape is filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Texture {
    Flat,
    /// Stripes of a darker shade, `period` px wide.
    Stripes {
        period: f32,
    },
}

/// One shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub kind: ShapeKind,
    pub color: Color,
    pub cx: f32,
    pub cy: f32,
    /// Circumradius in pixels.
    pub size: f32,
    pub angle: f32,
    pub texture: Texture,
}

fn rotate(x: f32, y: f32, a: f32) -> (f32, f32) {
    let (s, c) = a.sin_cos();
    (x * c - y * s, x * s + y * c)
}

/// Whether `(px, py)` lies inside the convex or star polygon `pts` (even-odd rule).
fn in_polygon(pts: &[(f32, f32)], px: f32, py: f32) -> bool {
    let mut inside = false;
    let n = pts.len();
    for i in 0..n {
        let (xi, yi) = pts[i];
        let (xj, yj) = pts[(i + n - 1) % n];
        if (yi > py) != (yj > py) && px < (xj - xi) * (py - yi) / (yj - yi) + xi {
            inside = !inside;
        }
    }
    inside
}

impl Shape {
    /// The outline points (for polygons) in local, unrotated, unit-size coordinates.
    fn polygon(&self) -> Option<Vec<(f32, f32)>> {
        use std::f32::consts::PI;
        let regular = |n: usize, phase: f32| -> Vec<(f32, f32)> {
            (0..n)
                .map(|i| {
                    let a = phase + 2.0 * PI * i as f32 / n as f32;
                    (a.cos(), a.sin())
                })
                .collect()
        };
        match self.kind {
            ShapeKind::Square => Some(regular(4, PI / 4.0)),
            ShapeKind::Diamond => Some(vec![(0.0, -1.0), (0.7, 0.0), (0.0, 1.0), (-0.7, 0.0)]),
            ShapeKind::Triangle => Some(regular(3, -PI / 2.0)),
            ShapeKind::Star => Some(
                (0..10)
                    .map(|i| {
                        let a = -PI / 2.0 + PI * i as f32 / 5.0;
                        let r = if i % 2 == 0 { 1.0 } else { 0.45 };
                        (r * a.cos(), r * a.sin())
                    })
                    .collect(),
            ),
            ShapeKind::Circle | ShapeKind::Heart => None,
        }
    }

    /// Whether the point lies inside the shape.
    pub fn contains(&self, px: f32, py: f32) -> bool {
        let (lx, ly) = rotate(px - self.cx, py - self.cy, -self.angle);
        let (x, y) = (lx / self.size, ly / self.size);
        match self.kind {
            ShapeKind::Circle => x * x + y * y <= 1.0,
            ShapeKind::Heart => {
                // (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, y up, scaled to fit the unit circle.
                let (hx, hy) = (x * 1.15, -y * 1.15 + 0.15);
                let a = hx * hx + hy * hy - 1.0;
                a * a * a - hx * hx * hy * hy * hy <= 0.0
            }
            _ => in_polygon(&self.polygon().expect("polygon kinds"), x, y),
        }
    }

    /// The colour of the shape at a point it covers.
    pub fn color_at(&self, px: f32, py: f32) -> [u8; 3] {
        match self.texture {
            Texture::Flat => self.color.rgb,
            Texture::Stripes { period } => {
                let (lx, _) = rotate(px - self.cx, py - self.cy, -self.angle);
                if (lx / period).rem_euclid(2.0) < 1.0 {
                    self.color.rgb
                } else {
                    self.color.rgb.map(|v| (v as f32 * 0.7) as u8)
                }
            }
        }
    }
}

/// Something painted in a scene.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Shape(Shape),
    Person(Person),
}

impl Item {
    pub fn contains(&self, x: f32, y: f32) -> bool {
        match self {
            Item::Shape(s) => s.contains(x, y),
            Item::Person(p) => p.contains(x, y),
        }
    }

    fn color_at(&self, x: f32, y: f32) -> [u8; 3] {
        match self {
            Item::Shape(s) => s.color_at(x, y),
            Item::Person(p) => p.color.rgb,
        }
    }
}

/// What is behind the items.
#[derive(Debug, Clone, PartialEq)]
pub enum Background {
    Flat([u8; 3]),
    Gradient {
        from: [u8; 3],
        to: [u8; 3],
        angle: f32,
    },
    /// Smooth value noise around a base colour.
    Noise {
        base: [u8; 3],
        seed: u64,
        cell: f32,
        amplitude: f32,
    },
    /// A crop of one of the bundled photos.
    Photo {
        index: usize,
        x0: u32,
        y0: u32,
        scale: f32,
    },
}

/// A scene: a square canvas, a background and items painted in order (later ones on top).
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub size: u32,
    pub background: Background,
    pub items: Vec<Item>,
}

fn hash2(seed: u64, x: i64, y: i64) -> f32 {
    let mut h = seed
        ^ (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h >> 40) as f32 / (1u64 << 24) as f32
}

fn value_noise(seed: u64, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let s = |t: f32| t * t * (3.0 - 2.0 * t);
    let (sx, sy) = (s(fx), s(fy));
    let v = |dx: i64, dy: i64| hash2(seed, x0 as i64 + dx, y0 as i64 + dy);
    let top = v(0, 0) * (1.0 - sx) + v(1, 0) * sx;
    let bottom = v(0, 1) * (1.0 - sx) + v(1, 1) * sx;
    top * (1.0 - sy) + bottom * sy
}

/// The photos available as backgrounds (small copies of `../shared/photos`).
pub fn photos() -> &'static [RgbImage] {
    static PHOTOS: std::sync::OnceLock<Vec<RgbImage>> = std::sync::OnceLock::new();
    PHOTOS.get_or_init(|| {
        [
            &include_bytes!("../../assets/textures/astronaut.jpg")[..],
            include_bytes!("../../assets/textures/chelsea.jpg"),
            include_bytes!("../../assets/textures/coffee.jpg"),
            include_bytes!("../../assets/textures/rocket.jpg"),
        ]
        .iter()
        .map(|b| {
            image::load_from_memory(b)
                .expect("bundled texture decodes")
                .to_rgb8()
        })
        .collect()
    })
}

impl Background {
    fn at(&self, x: u32, y: u32, size: u32) -> [u8; 3] {
        match self {
            Background::Flat(c) => *c,
            Background::Gradient { from, to, angle } => {
                let (u, v) = (x as f32 / size as f32 - 0.5, y as f32 / size as f32 - 0.5);
                let t = (u * angle.cos() + v * angle.sin() + 0.71) / 1.42;
                let t = t.clamp(0.0, 1.0);
                [0, 1, 2].map(|k| (from[k] as f32 * (1.0 - t) + to[k] as f32 * t) as u8)
            }
            Background::Noise {
                base,
                seed,
                cell,
                amplitude,
            } => {
                let n = value_noise(*seed, x as f32 / cell, y as f32 / cell) - 0.5;
                base.map(|v| (v as f32 + n * amplitude).clamp(0.0, 255.0) as u8)
            }
            Background::Photo {
                index,
                x0,
                y0,
                scale,
            } => {
                let p = &photos()[*index % photos().len()];
                let sx = (x0 + (x as f32 * scale) as u32).min(p.width() - 1);
                let sy = (y0 + (y as f32 * scale) as u32).min(p.height() - 1);
                p.get_pixel(sx, sy).0
            }
        }
    }
}

/// Supersampling grid per pixel (per axis) for anti-aliased edges.
const SS: u32 = 3;

impl Scene {
    /// Renders the scene.
    pub fn render(&self) -> RgbImage {
        let n = self.size;
        RgbImage::from_fn(n, n, |x, y| {
            let bg = self.background.at(x, y, n);
            let mut acc = [0f32; 3];
            for sy in 0..SS {
                for sx in 0..SS {
                    let (px, py) = (
                        x as f32 + (sx as f32 + 0.5) / SS as f32,
                        y as f32 + (sy as f32 + 0.5) / SS as f32,
                    );
                    let col = self
                        .items
                        .iter()
                        .rev()
                        .find(|it| it.contains(px, py))
                        .map(|it| it.color_at(px, py))
                        .unwrap_or(bg);
                    for k in 0..3 {
                        acc[k] += col[k] as f32;
                    }
                }
            }
            Rgb(acc.map(|v| (v / (SS * SS) as f32).round() as u8))
        })
    }

    /// The visible mask of item `i` (pixel centres where it is the topmost item), row-major.
    pub fn visible_mask(&self, i: usize) -> Vec<bool> {
        let n = self.size;
        let mut m = vec![false; (n * n) as usize];
        for y in 0..n {
            for x in 0..n {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let top = self.items.iter().rposition(|it| it.contains(px, py));
                m[(y * n + x) as usize] = top == Some(i);
            }
        }
        m
    }

    /// Shapes with their item index.
    pub fn shapes(&self) -> impl Iterator<Item = (usize, &Shape)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, it)| match it {
                Item::Shape(s) => Some((i, s)),
                Item::Person(_) => None,
            })
    }

    /// People with their item index.
    pub fn people(&self) -> impl Iterator<Item = (usize, &Person)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, it)| match it {
                Item::Person(p) => Some((i, p)),
                Item::Shape(_) => None,
            })
    }
}

/// Draws a random background.
pub fn random_background(rng: &mut ChaCha8Rng, size: u32) -> Background {
    let color = |rng: &mut ChaCha8Rng| [rng.random::<u8>(), rng.random::<u8>(), rng.random::<u8>()];
    match rng.random_range(0..4) {
        0 => Background::Flat(color(rng)),
        1 => Background::Gradient {
            from: color(rng),
            to: color(rng),
            angle: rng.random_range(0.0..std::f32::consts::TAU),
        },
        2 => Background::Noise {
            base: color(rng),
            seed: rng.random(),
            cell: rng.random_range(4.0..24.0) * size as f32 / 128.0,
            amplitude: rng.random_range(20.0..90.0),
        },
        _ => {
            let index = rng.random_range(0..photos().len());
            let p = &photos()[index];
            let scale =
                rng.random_range(0.5f32..1.0) * (p.width().min(p.height()) as f32 / size as f32);
            let span = (size as f32 * scale) as u32;
            Background::Photo {
                index,
                x0: rng.random_range(0..=p.width().saturating_sub(span)),
                y0: rng.random_range(0..=p.height().saturating_sub(span)),
                scale,
            }
        }
    }
}

/// Draws a random shape inside a `size` canvas.
pub fn random_shape(rng: &mut ChaCha8Rng, size: u32, kind: ShapeKind, color: Color) -> Shape {
    let s = size as f32;
    let r = rng.random_range(0.07..0.16) * s;
    Shape {
        kind,
        color,
        cx: rng.random_range(r..s - r),
        cy: rng.random_range(r..s - r),
        size: r,
        angle: if matches!(
            kind,
            ShapeKind::Heart | ShapeKind::Triangle | ShapeKind::Star
        ) {
            rng.random_range(-0.3..0.3)
        } else {
            rng.random_range(0.0..std::f32::consts::TAU)
        },
        texture: if rng.random_bool(0.2) {
            Texture::Stripes {
                period: rng.random_range(2.0..5.0) * s / 128.0,
            }
        } else {
            Texture::Flat
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_their_centre_and_not_far_away() {
        for kind in ShapeKind::ALL {
            let s = Shape {
                kind,
                color: OBJECT_COLORS[0],
                cx: 50.0,
                cy: 50.0,
                size: 20.0,
                angle: 0.3,
                texture: Texture::Flat,
            };
            assert!(s.contains(50.0, 50.0), "{kind:?} centre");
            assert!(
                !s.contains(50.0, 75.0) && !s.contains(80.0, 50.0),
                "{kind:?} outside"
            );
        }
    }

    #[test]
    fn occlusion_hides_lower_items() {
        let a = Shape {
            kind: ShapeKind::Square,
            color: OBJECT_COLORS[0],
            cx: 20.0,
            cy: 20.0,
            size: 10.0,
            angle: 0.0,
            texture: Texture::Flat,
        };
        let b = Shape {
            cx: 24.0,
            ..a.clone()
        };
        let scene = Scene {
            size: 40,
            background: Background::Flat([0, 0, 0]),
            items: vec![Item::Shape(a), Item::Shape(b)],
        };
        let (ma, mb) = (scene.visible_mask(0), scene.visible_mask(1));
        assert!(ma.iter().zip(&mb).all(|(x, y)| !(x & y)));
        assert!(!ma[20 * 40 + 22] && mb[20 * 40 + 22]);
        assert!(ma[20 * 40 + 14]);
    }
}
