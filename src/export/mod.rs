//! File formats for annotations, all written atomically by their callers:
//! COCO run-length encoding ([`rle`]) and JSON ([`coco`]), Labelme JSON ([`labelme`], with
//! outlines from [`contour`]), PNG masks and label maps ([`masks`]), YOLO boxes ([`yolo`]).

pub mod coco;
pub mod contour;
pub mod labelme;
pub mod masks;
pub mod rle;
pub mod yolo;
