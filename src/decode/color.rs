//! Colour names as users write them: the paper's overlay colours first, then every CSS/X11
//! named colour, then `#rrggbb` / `#rgb` hex codes.

use crate::tasks::{KEYPOINT_COLORS, MASK_COLORS};

/// The CSS Color Module Level 4 named colours (the X11 set), lower case, without spaces.
const CSS: &[(&str, [u8; 3])] = &[
    ("aliceblue", [240, 248, 255]),
    ("antiquewhite", [250, 235, 215]),
    ("aqua", [0, 255, 255]),
    ("aquamarine", [127, 255, 212]),
    ("azure", [240, 255, 255]),
    ("beige", [245, 245, 220]),
    ("bisque", [255, 228, 196]),
    ("black", [0, 0, 0]),
    ("blanchedalmond", [255, 235, 205]),
    ("blue", [0, 0, 255]),
    ("blueviolet", [138, 43, 226]),
    ("brown", [165, 42, 42]),
    ("burlywood", [222, 184, 135]),
    ("cadetblue", [95, 158, 160]),
    ("chartreuse", [127, 255, 0]),
    ("chocolate", [210, 105, 30]),
    ("coral", [255, 127, 80]),
    ("cornflowerblue", [100, 149, 237]),
    ("cornsilk", [255, 248, 220]),
    ("crimson", [220, 20, 60]),
    ("cyan", [0, 255, 255]),
    ("darkblue", [0, 0, 139]),
    ("darkcyan", [0, 139, 139]),
    ("darkgoldenrod", [184, 134, 11]),
    ("darkgray", [169, 169, 169]),
    ("darkgreen", [0, 100, 0]),
    ("darkgrey", [169, 169, 169]),
    ("darkkhaki", [189, 183, 107]),
    ("darkmagenta", [139, 0, 139]),
    ("darkolivegreen", [85, 107, 47]),
    ("darkorange", [255, 140, 0]),
    ("darkorchid", [153, 50, 204]),
    ("darkred", [139, 0, 0]),
    ("darksalmon", [233, 150, 122]),
    ("darkseagreen", [143, 188, 143]),
    ("darkslateblue", [72, 61, 139]),
    ("darkslategray", [47, 79, 79]),
    ("darkslategrey", [47, 79, 79]),
    ("darkturquoise", [0, 206, 209]),
    ("darkviolet", [148, 0, 211]),
    ("deeppink", [255, 20, 147]),
    ("deepskyblue", [0, 191, 255]),
    ("dimgray", [105, 105, 105]),
    ("dimgrey", [105, 105, 105]),
    ("dodgerblue", [30, 144, 255]),
    ("firebrick", [178, 34, 34]),
    ("floralwhite", [255, 250, 240]),
    ("forestgreen", [34, 139, 34]),
    ("fuchsia", [255, 0, 255]),
    ("gainsboro", [220, 220, 220]),
    ("ghostwhite", [248, 248, 255]),
    ("gold", [255, 215, 0]),
    ("goldenrod", [218, 165, 32]),
    ("gray", [128, 128, 128]),
    ("green", [0, 128, 0]),
    ("greenyellow", [173, 255, 47]),
    ("grey", [128, 128, 128]),
    ("honeydew", [240, 255, 240]),
    ("hotpink", [255, 105, 180]),
    ("indianred", [205, 92, 92]),
    ("indigo", [75, 0, 130]),
    ("ivory", [255, 255, 240]),
    ("khaki", [240, 230, 140]),
    ("lavender", [230, 230, 250]),
    ("lavenderblush", [255, 240, 245]),
    ("lawngreen", [124, 252, 0]),
    ("lemonchiffon", [255, 250, 205]),
    ("lightblue", [173, 216, 230]),
    ("lightcoral", [240, 128, 128]),
    ("lightcyan", [224, 255, 255]),
    ("lightgoldenrodyellow", [250, 250, 210]),
    ("lightgray", [211, 211, 211]),
    ("lightgreen", [144, 238, 144]),
    ("lightgrey", [211, 211, 211]),
    ("lightpink", [255, 182, 193]),
    ("lightsalmon", [255, 160, 122]),
    ("lightseagreen", [32, 178, 170]),
    ("lightskyblue", [135, 206, 250]),
    ("lightslategray", [119, 136, 153]),
    ("lightslategrey", [119, 136, 153]),
    ("lightsteelblue", [176, 196, 222]),
    ("lightyellow", [255, 255, 224]),
    ("lime", [0, 255, 0]),
    ("limegreen", [50, 205, 50]),
    ("linen", [250, 240, 230]),
    ("magenta", [255, 0, 255]),
    ("maroon", [128, 0, 0]),
    ("mediumaquamarine", [102, 205, 170]),
    ("mediumblue", [0, 0, 205]),
    ("mediumorchid", [186, 85, 211]),
    ("mediumpurple", [147, 112, 219]),
    ("mediumseagreen", [60, 179, 113]),
    ("mediumslateblue", [123, 104, 238]),
    ("mediumspringgreen", [0, 250, 154]),
    ("mediumturquoise", [72, 209, 204]),
    ("mediumvioletred", [199, 21, 133]),
    ("midnightblue", [25, 25, 112]),
    ("mintcream", [245, 255, 250]),
    ("mistyrose", [255, 228, 225]),
    ("moccasin", [255, 228, 181]),
    ("navajowhite", [255, 222, 173]),
    ("navy", [0, 0, 128]),
    ("oldlace", [253, 245, 230]),
    ("olive", [128, 128, 0]),
    ("olivedrab", [107, 142, 35]),
    ("orange", [255, 165, 0]),
    ("orangered", [255, 69, 0]),
    ("orchid", [218, 112, 214]),
    ("palegoldenrod", [238, 232, 170]),
    ("palegreen", [152, 251, 152]),
    ("paleturquoise", [175, 238, 238]),
    ("palevioletred", [219, 112, 147]),
    ("papayawhip", [255, 239, 213]),
    ("peachpuff", [255, 218, 185]),
    ("peru", [205, 133, 63]),
    ("pink", [255, 192, 203]),
    ("plum", [221, 160, 221]),
    ("powderblue", [176, 224, 230]),
    ("purple", [128, 0, 128]),
    ("rebeccapurple", [102, 51, 153]),
    ("red", [255, 0, 0]),
    ("rosybrown", [188, 143, 143]),
    ("royalblue", [65, 105, 225]),
    ("saddlebrown", [139, 69, 19]),
    ("salmon", [250, 128, 114]),
    ("sandybrown", [244, 164, 96]),
    ("seagreen", [46, 139, 87]),
    ("seashell", [255, 245, 238]),
    ("sienna", [160, 82, 45]),
    ("silver", [192, 192, 192]),
    ("skyblue", [135, 206, 235]),
    ("slateblue", [106, 90, 205]),
    ("slategray", [112, 128, 144]),
    ("slategrey", [112, 128, 144]),
    ("snow", [255, 250, 250]),
    ("springgreen", [0, 255, 127]),
    ("steelblue", [70, 130, 180]),
    ("tan", [210, 180, 140]),
    ("teal", [0, 128, 128]),
    ("thistle", [216, 191, 216]),
    ("tomato", [255, 99, 71]),
    ("turquoise", [64, 224, 208]),
    ("violet", [238, 130, 238]),
    ("wheat", [245, 222, 179]),
    ("white", [255, 255, 255]),
    ("whitesmoke", [245, 245, 245]),
    ("yellow", [255, 255, 0]),
    ("yellowgreen", [154, 205, 50]),
];

/// Where a colour is used: keypoint discs take the paper's keypoint palette, whose green is
/// the bright (0, 255, 0), where masks and CSS use (0, 128, 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Palette {
    Mask,
    Keypoint,
}

/// Looks a colour up by name (case, spaces, hyphens and the `grey` spelling don't matter) or
/// as a hex code.
pub fn lookup(name: &str, palette: Palette) -> Option<[u8; 3]> {
    let key: String = name
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-' && *c != '_')
        .collect();
    if let Some(hex) = key.strip_prefix('#') {
        return parse_hex(hex);
    }
    let paper = match palette {
        Palette::Mask => &MASK_COLORS[..],
        Palette::Keypoint => &KEYPOINT_COLORS[..],
    };
    let key = key.replace("grey", "gray");
    paper
        .iter()
        .find(|c| c.name == key)
        .map(|c| c.rgb)
        .or_else(|| CSS.iter().find(|(n, _)| *n == key).map(|(_, rgb)| *rgb))
}

fn parse_hex(hex: &str) -> Option<[u8; 3]> {
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |i: usize, n: usize| u8::from_str_radix(&hex[i..i + n], 16).ok();
    match hex.len() {
        6 => Some([digit(0, 2)?, digit(2, 2)?, digit(4, 2)?]),
        3 => Some([digit(0, 1)? * 17, digit(1, 1)? * 17, digit(2, 1)? * 17]),
        _ => None,
    }
}

/// A regex alternation matching every colour name (longest first, multi-word CSS names with
/// optional spaces, e.g. "light blue") and hex codes, for the instruction parser.
pub fn pattern() -> String {
    let mut names: Vec<String> = CSS
        .iter()
        .map(|(n, _)| spaced(n))
        .chain(["grey".to_string()])
        .collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    names.dedup();
    format!(
        "#[0-9a-fA-F]{{6}}\\b|#[0-9a-fA-F]{{3}}\\b|\\b(?:{})\\b",
        names.join("|")
    )
}

/// "lightseagreen" -> "light[ -]?sea[ -]?green": lets users write the words apart.
fn spaced(name: &str) -> String {
    const WORDS: &[&str] = &[
        "light",
        "dark",
        "medium",
        "pale",
        "deep",
        "hot",
        "dim",
        "lawn",
        "sea",
        "sky",
        "slate",
        "steel",
        "royal",
        "midnight",
        "navajo",
        "old",
        "olive",
        "forest",
        "lime",
        "spring",
        "yellow",
        "orange",
        "violet",
        "cornflower",
        "dodger",
        "cadet",
        "rebecca",
        "powder",
        "rosy",
        "saddle",
        "sandy",
        "indian",
        "alice",
        "antique",
        "blanched",
        "floral",
        "ghost",
        "lemon",
        "misty",
        "papaya",
        "peach",
        "white",
        "mint",
        "lavender",
        "golden",
        "green",
        "blue",
    ];
    let mut out = String::new();
    let mut rest = name;
    'outer: while !rest.is_empty() {
        for w in WORDS {
            if rest.len() > w.len() && rest.starts_with(w) {
                out.push_str(w);
                out.push_str("[ -]?");
                rest = &rest[w.len()..];
                continue 'outer;
            }
        }
        out.push_str(rest);
        break;
    }
    out
}

/// The name to show for a colour: the paper's or CSS name when it has one, else hex.
pub fn describe(rgb: [u8; 3]) -> String {
    MASK_COLORS
        .iter()
        .chain(KEYPOINT_COLORS.iter())
        .map(|c| (c.name, c.rgb))
        .chain(CSS.iter().copied())
        .find(|(_, c)| *c == rgb)
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_css_and_hex_colours() {
        assert_eq!(lookup("green", Palette::Mask), Some([0, 128, 0]));
        assert_eq!(lookup("green", Palette::Keypoint), Some([0, 255, 0]));
        assert_eq!(lookup("Light Blue", Palette::Mask), Some([173, 216, 230]));
        assert_eq!(lookup("dark-grey", Palette::Mask), Some([169, 169, 169]));
        assert_eq!(lookup("#FF8000", Palette::Mask), Some([255, 128, 0]));
        assert_eq!(lookup("#f80", Palette::Mask), Some([255, 136, 0]));
        assert_eq!(lookup("#ggg", Palette::Mask), None);
        assert_eq!(lookup("blurple", Palette::Mask), None);
        assert_eq!(CSS.len(), 148);
        let re = regex::Regex::new(&pattern()).unwrap();
        let found: Vec<_> = re
            .find_iter("a light sea green dot, a #00ff00 mask and darkorange")
            .map(|m| m.as_str())
            .collect();
        assert_eq!(found, ["light sea green", "#00ff00", "darkorange"]);
        assert_eq!(describe([0, 255, 0]), "green");
        assert_eq!(describe([1, 2, 3]), "#010203");
    }
}
