//! The one preprocessing path shared by training and inference: decode any PNG/JPEG to RGB8,
//! resize to the model's input size with a named filter, scale to [0, 1] floats, lay out as CHW.
//! The exporter writes these settings into the ONNX metadata and the runtime reads them back
//! (`to_metadata` / `from_metadata`), so both sides agree by construction.

use anyhow::{Context, Result, bail};
use common::choice::Choice;
use common::text::Shown;
use image::{ImageReader, Limits, RgbImage};
use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

/// The input sides a model may declare (metadata and `--input-size`).
pub const MIN_SIZE: u32 = 8;
pub const MAX_SIZE: u32 = 1024;

/// Files larger than this are refused before reading (a 50x50 patch is ~5 KB).
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// Images with more pixels than this are refused before decoding (decompression bombs).
pub const MAX_PIXELS: u64 = 64 << 20;

/// Resize filter. `nearest` is what Keras' `load_img(target_size=...)` (the tutorial) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Nearest,
    Bilinear,
    Bicubic,
    Lanczos3,
}

/// The names are serde's too (lowercase): configs, metadata and flags spell them alike.
impl Choice for Filter {
    const CHOICES: &'static [(Filter, &'static str, &'static str)] = &[
        (Filter::Nearest, "nearest", ""),
        (Filter::Bilinear, "bilinear", ""),
        (Filter::Bicubic, "bicubic", ""),
        (Filter::Lanczos3, "lanczos3", ""),
    ];
}

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
    #[error("empty file (0 bytes)")]
    Empty,
    #[error("file is {0} bytes, over the {MAX_FILE_BYTES}-byte limit for a patch")]
    FileTooLarge(u64),
    #[error("image is {0}x{1}, over the {MAX_PIXELS}-pixel limit (a decompression bomb?)")]
    TooManyPixels(u32, u32),
    #[error("not a decodable PNG/JPEG: {0}")]
    Decode(String),
}

/// Decodes image bytes of any colour type (RGB, RGBA, grey, 16-bit) to RGB8.
pub fn decode_rgb8(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| DecodeError::Decode(e.to_string()))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(DecodeError::TooManyPixels(w, h));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8 + (1 << 20));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| DecodeError::Decode(e.to_string()))?;
    Ok(img.into_rgb8())
}

/// Reads and decodes a file to RGB8, refusing oversized files before reading them.
pub fn read_rgb8(path: &Path) -> Result<RgbImage, DecodeError> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_FILE_BYTES {
        return Err(DecodeError::FileTooLarge(len));
    }
    decode_rgb8(&std::fs::read(path)?)
}

/// How an image becomes the model's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    /// Square input side in pixels (the tutorial's `target_size` is 48).
    pub size: u32,
    pub filter: Filter,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            size: 48,
            filter: Filter::Nearest,
        }
    }
}

/// Metadata keys, as written into the ONNX file.
pub mod keys {
    pub const SIZE: &str = "preprocess.input_size";
    pub const FILTER: &str = "preprocess.resize_filter";
    pub const LAYOUT: &str = "preprocess.layout";
    pub const COLOUR: &str = "preprocess.colour_order";
    pub const SCALE: &str = "preprocess.scaling";
}

impl Preprocess {
    pub const LAYOUT: &'static str = "NCHW";
    pub const COLOUR: &'static str = "RGB";
    pub const SCALE: &'static str = "x / 255 (float32 in [0, 1]), no mean/std normalisation";

    /// Number of floats per image.
    pub fn len(&self) -> usize {
        3 * (self.size * self.size) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Resizes to `size` x `size` (no copy when already that size).
    pub fn resize(&self, img: RgbImage) -> RgbImage {
        let s = self.size;
        if img.width() == s && img.height() == s {
            return img;
        }
        match self.filter {
            Filter::Nearest => resize_nearest(&img, s, s),
            Filter::Bilinear => {
                image::imageops::resize(&img, s, s, image::imageops::FilterType::Triangle)
            }
            Filter::Bicubic => {
                image::imageops::resize(&img, s, s, image::imageops::FilterType::CatmullRom)
            }
            Filter::Lanczos3 => {
                image::imageops::resize(&img, s, s, image::imageops::FilterType::Lanczos3)
            }
        }
    }

    /// Writes the scaled CHW floats of an already-resized image into `out` (`self.len()` floats).
    pub fn to_chw(&self, img: &RgbImage, out: &mut [f32]) {
        let plane = (self.size * self.size) as usize;
        assert_eq!(img.width(), self.size, "image must be resized first");
        assert_eq!(out.len(), 3 * plane);
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = px[c] as f32 * (1.0 / 255.0);
            }
        }
    }

    /// Decode + resize a file (the part of preprocessing before augmentation).
    pub fn load_resized(&self, path: &Path) -> Result<RgbImage, DecodeError> {
        Ok(self.resize(read_rgb8(path)?))
    }

    /// The whole path for inference: file to `self.len()` floats in `out`.
    pub fn load_into(&self, path: &Path, out: &mut [f32]) -> Result<(), DecodeError> {
        let img = self.load_resized(path)?;
        self.to_chw(&img, out);
        Ok(())
    }

    pub fn to_metadata(&self) -> Vec<(String, String)> {
        vec![
            (keys::SIZE.into(), self.size.to_string()),
            (keys::FILTER.into(), self.filter.name().into()),
            (keys::LAYOUT.into(), Self::LAYOUT.into()),
            (keys::COLOUR.into(), Self::COLOUR.into()),
            (keys::SCALE.into(), Self::SCALE.into()),
        ]
    }

    /// Reads the settings back from model metadata; fails naming the missing or unknown key.
    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<Preprocess> {
        let get = |k: &str| {
            meta.get(k)
                .with_context(|| format!("model metadata has no {k:?}"))
        };
        // Metadata is input like any other (a model from someone else): checked, and quoted
        // escaped.
        let raw = get(keys::SIZE)?;
        let size: u32 = raw
            .trim()
            .parse()
            .ok()
            .filter(|s| (MIN_SIZE..=MAX_SIZE).contains(s))
            .with_context(|| {
                format!(
                    "model metadata {} = \"{}\" is not a side in [{MIN_SIZE}, {MAX_SIZE}]",
                    keys::SIZE,
                    raw.shown()
                )
            })?;
        let filter_name = get(keys::FILTER)?;
        let filter = Filter::from_name(filter_name)
            .with_context(|| format!("unknown resize filter \"{}\"", filter_name.shown()))?;
        for (k, want) in [
            (keys::LAYOUT, Self::LAYOUT),
            (keys::COLOUR, Self::COLOUR),
            (keys::SCALE, Self::SCALE),
        ] {
            if get(k)? != want {
                bail!(
                    "model metadata {k} = \"{}\", but this runtime only does {want:?}",
                    get(k)?.shown()
                );
            }
        }
        Ok(Preprocess { size, filter })
    }
}

/// Nearest-neighbour resize with pixel-centre mapping, as PIL's `NEAREST` (and so Keras) does it:
/// source index = floor((dst + 0.5) * src / dst).
pub fn resize_nearest(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (sw, sh) = img.dimensions();
    // For d < dst, (2d + 1) * src / (2 dst) < src: always a pixel of the source.
    let map =
        |d: u32, src: u32, dst: u32| (((d as u64 * 2 + 1) * src as u64) / (dst as u64 * 2)) as u32;
    let xs: Vec<u32> = (0..w).map(|x| map(x, sw, w)).collect();
    RgbImage::from_fn(w, h, |x, y| *img.get_pixel(xs[x as usize], map(y, sh, h)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_names_are_serdes() {
        for &(filter, name, _) in Filter::CHOICES {
            assert_eq!(
                serde_json::to_string(&filter).unwrap(),
                format!("\"{name}\"")
            );
        }
    }
    use image::{DynamicImage, ImageFormat, Rgb};

    fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, format).unwrap();
        buf.into_inner()
    }

    #[test]
    fn every_colour_type_decodes_to_rgb8() {
        let rgb = RgbImage::from_fn(50, 50, |x, y| Rgb([x as u8 * 5, y as u8 * 5, 200]));
        let dynamic = DynamicImage::ImageRgb8(rgb.clone());
        for img in [
            dynamic.clone(),
            DynamicImage::ImageRgba8(dynamic.to_rgba8()),
            DynamicImage::ImageLuma8(dynamic.to_luma8()),
            DynamicImage::ImageRgb16(dynamic.to_rgb16()),
            DynamicImage::ImageLuma16(dynamic.to_luma16()),
        ] {
            let decoded = decode_rgb8(&encode(img.clone(), ImageFormat::Png)).unwrap();
            assert_eq!(decoded.dimensions(), (50, 50));
            if matches!(
                img,
                DynamicImage::ImageRgb8(_)
                    | DynamicImage::ImageRgba8(_)
                    | DynamicImage::ImageRgb16(_)
            ) {
                assert_eq!(decoded, rgb, "{:?}", img.color());
            }
        }
        let jpeg = decode_rgb8(&encode(dynamic, ImageFormat::Jpeg)).unwrap();
        assert_eq!(jpeg.dimensions(), (50, 50));
    }

    #[test]
    fn bad_bytes_are_clear_errors() {
        assert!(matches!(decode_rgb8(b""), Err(DecodeError::Empty)));
        assert!(matches!(
            decode_rgb8(b"not an image at all"),
            Err(DecodeError::Decode(_))
        ));
        let png = encode(
            DynamicImage::ImageRgb8(RgbImage::new(50, 50)),
            ImageFormat::Png,
        );
        assert!(matches!(
            decode_rgb8(&png[..png.len() / 2]),
            Err(DecodeError::Decode(_))
        ));
    }

    /// A file over the 64 MiB cap is refused from its size alone, before a byte is read (the
    /// file here is sparse: 65 MiB that take no disk).
    #[test]
    fn oversized_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(
            matches!(read_rgb8(&path), Err(DecodeError::FileTooLarge(n)) if n == MAX_FILE_BYTES + 1)
        );
        f.set_len(MAX_FILE_BYTES).unwrap();
        assert!(
            matches!(read_rgb8(&path), Err(DecodeError::Decode(_))),
            "at the cap it is read"
        );
    }

    /// The pixel cap is `> MAX_PIXELS`: a header of exactly MAX_PIXELS goes on to the decoder
    /// (which then finds no pixel data); one pixel more is refused first. Zero sides are refused
    /// by the PNG decoder itself.
    #[test]
    fn the_pixel_cap_is_exact_and_zero_sides_are_refused() {
        let side = 8192; // 8192 * 8192 = MAX_PIXELS
        assert_eq!(side * side, MAX_PIXELS);
        let at_cap = decode_rgb8(&crate::testdata::png_bomb(side as u32, side as u32));
        assert!(matches!(at_cap, Err(DecodeError::Decode(_))), "{at_cap:?}");
        let over = decode_rgb8(&crate::testdata::png_bomb(side as u32, side as u32 + 1));
        assert!(
            matches!(over, Err(DecodeError::TooManyPixels(_, _))),
            "{over:?}"
        );
        for (w, h) in [(0, 5), (5, 0)] {
            let zero = decode_rgb8(&crate::testdata::png_bomb(w, h));
            assert!(
                matches!(zero, Err(DecodeError::Decode(_))),
                "{w}x{h}: {zero:?}"
            );
        }
    }

    /// Resizing gives the input size whatever the sides (one side already right included), and
    /// leaves an image of that size as it is.
    #[test]
    fn resize_always_gives_the_input_size() {
        for filter in [
            Filter::Nearest,
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Lanczos3,
        ] {
            let pre = Preprocess { size: 48, filter };
            for (w, h) in [(50, 48), (48, 50), (50, 27), (2, 50), (48, 48)] {
                let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 5) as u8, (y * 5) as u8, 7]));
                let out = pre.resize(img.clone());
                assert_eq!(out.dimensions(), (48, 48), "{filter:?} {w}x{h}");
                if (w, h) == (48, 48) {
                    assert_eq!(out, img);
                }
            }
        }
        assert!(!Preprocess::default().is_empty());
        assert_eq!(Preprocess::default().len(), 3 * 48 * 48);
        assert!(
            Preprocess {
                size: 0,
                filter: Filter::Nearest
            }
            .is_empty()
        );
    }

    /// The decoder's allocation limit leaves room for the largest image the pixel cap lets
    /// through: a 5000 x 5000 RGB patch (75 MB of pixels) decodes.
    #[test]
    fn a_large_legitimate_image_decodes() {
        let png = encode(
            DynamicImage::ImageRgb8(RgbImage::new(5000, 5000)),
            ImageFormat::Png,
        );
        let img = decode_rgb8(&png).unwrap();
        assert_eq!(img.dimensions(), (5000, 5000));
    }

    #[test]
    fn decompression_bomb_is_refused_before_decoding() {
        let bomb = crate::testdata::png_bomb(100_000, 100_000);
        assert!(matches!(
            decode_rgb8(&bomb),
            Err(DecodeError::TooManyPixels(100_000, 100_000))
        ));
    }

    #[test]
    fn nearest_matches_pil_centre_mapping() {
        // 50 -> 48: PIL's NEAREST takes source columns floor((x + .5) * 50 / 48).
        let img = RgbImage::from_fn(50, 1, |x, _| Rgb([x as u8, 0, 0]));
        let small = resize_nearest(&img, 48, 1);
        let got: Vec<u8> = small.pixels().map(|p| p[0]).collect();
        let want: Vec<u8> = (0..48)
            .map(|x| ((x as f64 + 0.5) * 50.0 / 48.0).floor() as u8)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn chw_layout_and_scaling() {
        let pre = Preprocess {
            size: 2,
            filter: Filter::Nearest,
        };
        let img = RgbImage::from_fn(2, 2, |x, y| Rgb([(x + 2 * y) as u8, 255, 0]));
        let mut out = vec![0.0; pre.len()];
        pre.to_chw(&img, &mut out);
        let s = 1.0f32 / 255.0; // Keras multiplies by rescale = 1/255
        assert_eq!(&out[..4], &[0.0, s, 2.0 * s, 3.0 * s]);
        assert!(out[4..8].iter().all(|&v| v == 1.0));
        assert!(out[8..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn metadata_round_trip() {
        let pre = Preprocess {
            size: 64,
            filter: Filter::Bilinear,
        };
        let meta: HashMap<String, String> = pre.to_metadata().into_iter().collect();
        assert_eq!(Preprocess::from_metadata(&meta).unwrap(), pre);
        for (key, value) in [
            (keys::LAYOUT, "NHWC"),
            (keys::SIZE, "0"),
            (keys::SIZE, "4294967295"),
            (keys::SIZE, "-48"),
            (keys::SIZE, "48\u{1b}[2J"),
            (keys::FILTER, "gaussian"),
        ] {
            let mut bad = meta.clone();
            bad.insert(key.into(), value.into());
            let err = format!("{:#}", Preprocess::from_metadata(&bad).unwrap_err());
            assert!(err.contains(key) || err.contains("filter"), "{err}");
            assert!(!err.contains('\u{1b}'), "raw escape in {err:?}");
        }
    }

    use proptest::prelude::*;

    fn png_of(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 5) as u8, (y * 7) as u8, 90]));
        encode(DynamicImage::ImageRgb8(img), ImageFormat::Png)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Arbitrary bytes are an image or an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_rgb8(&bytes);
        }

        /// A real PNG or JPEG with some bytes changed or cut: decoded or refused, never a panic.
        #[test]
        fn damaged_images_never_panic(
            jpeg in any::<bool>(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..12),
            cut in any::<usize>(),
        ) {
            let mut bytes = if jpeg {
                encode(DynamicImage::ImageRgb8(RgbImage::from_pixel(50, 50, Rgb([200, 100, 150]))), ImageFormat::Jpeg)
            } else {
                png_of(50, 50)
            };
            for (at, b) in edits {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = decode_rgb8(&bytes);
        }

        /// Memory is bounded: a header claiming more than MAX_PIXELS is refused before any pixel
        /// buffer is allocated, whatever the sides.
        #[test]
        fn huge_headers_are_refused_before_decoding(w in 1u32.., h in 1u32..) {
            let bomb = crate::testdata::png_bomb(w, h);
            let result = decode_rgb8(&bomb);
            if w as u64 * h as u64 > MAX_PIXELS {
                // Refused: by our cap where the header is readable, else by the PNG decoder's
                // own limit on the sides (also before any pixel buffer).
                let header = ImageReader::new(Cursor::new(&bomb))
                    .with_guessed_format()
                    .unwrap()
                    .into_dimensions();
                match header {
                    Ok(_) => prop_assert!(matches!(result, Err(DecodeError::TooManyPixels(_, _))), "{w}x{h}"),
                    Err(_) => prop_assert!(matches!(result, Err(DecodeError::Decode(_))), "{w}x{h}"),
                }
            }
        }
    }
}
