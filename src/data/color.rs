//! Named colours: what objects are painted in and what instructions call them.

/// A colour with its English name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Color {
    pub name: &'static str,
    pub rgb: [u8; 3],
}

/// A named colour (for the colour tables).
pub(crate) const fn c(name: &'static str, r: u8, g: u8, b: u8) -> Color {
    Color {
        name,
        rgb: [r, g, b],
    }
}

/// Colours objects are painted in.
pub const OBJECT_COLORS: [Color; 12] = [
    c("red", 220, 30, 30),
    c("orange", 245, 140, 20),
    c("yellow", 240, 220, 30),
    c("green", 40, 160, 60),
    c("blue", 40, 80, 220),
    c("purple", 130, 50, 170),
    c("pink", 245, 130, 190),
    c("brown", 130, 80, 40),
    c("white", 245, 245, 245),
    c("black", 20, 20, 20),
    c("gray", 128, 128, 128),
    c("cyan", 40, 200, 220),
];
