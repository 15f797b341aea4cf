//! Training-time augmentation with the semantics of Keras' `ImageDataGenerator.random_transform`
//! (the tutorial's generator): one affine map = rotation x shift x shear x zoom about the image
//! centre, sampled bilinearly (Keras' `interpolation_order=1`) with `fill_mode='nearest'`
//! (clamp to the edge), then random flips; optionally a random quarter turn, so that with both
//! flips every one of the 8 symmetries of the square (the views TTA averages) is drawn.

use crate::rng::Rng;
use crate::stain::StainJitter;
use image::{Rgb, RgbImage};

/// The tutorial's augmentation settings, in Keras' units.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Rotation range in degrees: angle ~ U(-r, r).
    pub rotation: f64,
    /// Zoom range: each axis scaled by ~ U(1 - z, 1 + z).
    pub zoom: f64,
    /// Horizontal shift as a fraction of the width.
    pub width_shift: f64,
    /// Vertical shift as a fraction of the height.
    pub height_shift: f64,
    /// Shear angle range in degrees (Keras 2 semantics).
    pub shear: f64,
    pub horizontal_flip: bool,
    pub vertical_flip: bool,
    /// A quarter turn with probability 1/2 after the flips (not in Keras; off by default).
    pub quarter_turns: bool,
    /// How pixels outside the image are filled; only `nearest` (Keras' default and the tutorial's).
    pub fill_mode: FillMode,
    /// HED stain jitter strength s (`stain.rs`; 0.05 "light", 0.2 "strong"); 0 = off.
    pub hed: f64,
    /// Brightness factor ~ U(1 - b, 1 + b); 0 = off.
    pub brightness: f64,
    /// Contrast factor ~ U(1 - c, 1 + c); 0 = off.
    pub contrast: f64,
    /// Saturation factor ~ U(1 - s, 1 + s); 0 = off.
    pub saturation: f64,
    /// Hue shift ~ U(-h, h) turns of the colour circle; 0 = off.
    pub hue: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FillMode {
    Nearest,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            rotation: 20.0,
            zoom: 0.05,
            width_shift: 0.1,
            height_shift: 0.1,
            shear: 0.05,
            horizontal_flip: true,
            vertical_flip: true,
            quarter_turns: false,
            fill_mode: FillMode::Nearest,
            hed: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
        }
    }
}

impl Augment {
    /// No augmentation at all.
    pub fn none() -> Self {
        Augment {
            rotation: 0.0,
            zoom: 0.0,
            width_shift: 0.0,
            height_shift: 0.0,
            shear: 0.0,
            horizontal_flip: false,
            vertical_flip: false,
            quarter_turns: false,
            ..Augment::default()
        }
    }

    /// The colour part of the augmentation.
    pub fn stain(&self) -> StainJitter {
        StainJitter {
            hed: self.hed,
            brightness: self.brightness,
            contrast: self.contrast,
            saturation: self.saturation,
            hue: self.hue,
        }
    }

    /// Names the first out-of-range setting.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            ("rotation", self.rotation, 0.0, 180.0),
            ("zoom", self.zoom, 0.0, 0.99),
            ("width_shift", self.width_shift, 0.0, 1.0),
            ("height_shift", self.height_shift, 0.0, 1.0),
            ("shear", self.shear, 0.0, 89.0),
            ("hed", self.hed, 0.0, 1.0),
            ("brightness", self.brightness, 0.0, 1.0),
            ("contrast", self.contrast, 0.0, 1.0),
            ("saturation", self.saturation, 0.0, 1.0),
            ("hue", self.hue, 0.0, 0.5),
        ];
        for (key, v, lo, hi) in checks {
            if !(lo..=hi).contains(&v) {
                return Err(format!("augment.{key} = {v} is out of range [{lo}, {hi}]"));
            }
        }
        Ok(())
    }

    /// A randomly transformed copy of `img`, drawing the same numbers in the same order as Keras.
    pub fn apply(&self, img: &RgbImage, rng: &mut Rng) -> RgbImage {
        let (w, h) = (img.width() as f64, img.height() as f64);
        let sym = |rng: &mut Rng, r: f64| if r > 0.0 { rng.range(-r, r) } else { 0.0 };
        let theta = sym(rng, self.rotation).to_radians();
        // Keras: tx shifts rows (height), ty shifts columns (width), both in pixels.
        let tx = sym(rng, self.height_shift) * h;
        let ty = sym(rng, self.width_shift) * w;
        let shear = sym(rng, self.shear).to_radians();
        let (zx, zy) = if self.zoom > 0.0 {
            (
                rng.range(1.0 - self.zoom, 1.0 + self.zoom),
                rng.range(1.0 - self.zoom, 1.0 + self.zoom),
            )
        } else {
            (1.0, 1.0)
        };
        // Keras draws both flips whether or not they are enabled.
        let flip_h = rng.bool(0.5) && self.horizontal_flip;
        let flip_v = rng.bool(0.5) && self.vertical_flip;

        // M = rotation . shift . shear . zoom, in (row, col) coordinates; it maps an output pixel
        // to the input position it samples (scipy.ndimage.affine_transform's convention).
        let (c, s) = (theta.cos(), theta.sin());
        let rot = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let shift = [[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]];
        let shr = [
            [1.0, -shear.sin(), 0.0],
            [0.0, shear.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ];
        let zoom = [[zx, 0.0, 0.0], [0.0, zy, 0.0], [0.0, 0.0, 1.0]];
        let m = mul(&mul(&mul(&rot, &shift), &shr), &zoom);
        // Keras' transform_matrix_offset_center: o = size / 2 - 0.5, the image's centre.
        let (or, oc) = (h / 2.0 - 0.5, w / 2.0 - 0.5);
        let m = mul(
            &mul(&[[1.0, 0.0, or], [0.0, 1.0, oc], [0.0, 0.0, 1.0]], &m),
            &[[1.0, 0.0, -or], [0.0, 1.0, -oc], [0.0, 0.0, 1.0]],
        );

        let identity = m == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let mut out = if identity { img.clone() } else { warp(img, &m) };
        if flip_h {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        if flip_v {
            image::imageops::flip_vertical_in_place(&mut out);
        }
        // Drawn only when on, so that the tutorial's stream of numbers is unchanged.
        if self.quarter_turns && rng.bool(0.5) {
            out = image::imageops::rotate90(&out);
        }
        // Colour last, from the same stream: with it off nothing more is drawn, so the
        // tutorial's augmentation is unchanged.
        self.stain().apply(&mut out, rng);
        out
    }
}

fn mul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut o = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            o[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    o
}

/// `img` resampled through `m` (output pixel to input position). Compiled for AVX2 as well:
/// there `floor` and `round` are instructions, not calls into libm (half the loader's time).
#[multiversion::multiversion(targets("x86_64+avx2+fma"))]
fn warp(img: &RgbImage, m: &[[f64; 3]; 3]) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |col, row| {
        let (r, cc) = (row as f64, col as f64);
        let sr = m[0][0] * r + m[0][1] * cc + m[0][2];
        let sc = m[1][0] * r + m[1][1] * cc + m[1][2];
        bilinear_clamped(img, sr, sc)
    })
}

/// Bilinear sample at (row, col), clamping coordinates to the image (fill_mode='nearest').
#[inline(always)]
fn bilinear_clamped(img: &RgbImage, row: f64, col: f64) -> Rgb<u8> {
    let (w, h) = (img.width() as f64 - 1.0, img.height() as f64 - 1.0);
    let (row, col) = (row.clamp(0.0, h), col.clamp(0.0, w));
    let (r0, c0) = (row.floor(), col.floor());
    let (fr, fc) = (row - r0, col - c0);
    let (r0, c0) = (r0 as u32, c0 as u32);
    let (r1, c1) = ((r0 + 1).min(h as u32), (c0 + 1).min(w as u32));
    let p = |r: u32, c: u32| img.get_pixel(c, r).0;
    let (a, b, c, d) = (p(r0, c0), p(r0, c1), p(r1, c0), p(r1, c1));
    let mut out = [0u8; 3];
    for k in 0..3 {
        let top = a[k] as f64 * (1.0 - fc) + b[k] as f64 * fc;
        let bottom = c[k] as f64 * (1.0 - fc) + d[k] as f64 * fc;
        out[k] = (top * (1.0 - fr) + bottom * fr).round() as u8;
    }
    Rgb(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(48, 48, |x, y| Rgb([(x * 5) as u8, (y * 5) as u8, 128]))
    }

    #[test]
    fn no_augmentation_is_identity() {
        let img = gradient();
        assert_eq!(Augment::none().apply(&img, &mut Rng::new(1)), img);
    }

    #[test]
    fn flips_only() {
        let img = gradient();
        let aug = Augment {
            horizontal_flip: true,
            vertical_flip: true,
            ..Augment::none()
        };
        let mut rng = Rng::new(3);
        let mut saw_flip = false;
        for _ in 0..8 {
            let out = aug.apply(&img, &mut rng);
            let (mut h, mut v) = (false, false);
            if out.get_pixel(0, 0)[0] != img.get_pixel(0, 0)[0] {
                h = true;
            }
            if out.get_pixel(0, 0)[1] != img.get_pixel(0, 0)[1] {
                v = true;
            }
            let mut back = out.clone();
            if h {
                image::imageops::flip_horizontal_in_place(&mut back);
            }
            if v {
                image::imageops::flip_vertical_in_place(&mut back);
            }
            assert_eq!(back, img);
            saw_flip |= h || v;
        }
        assert!(saw_flip);
    }

    /// With both flips and quarter turns, every draw is one of the square's 8 symmetries of the
    /// patch, and all 8 are drawn.
    #[test]
    fn quarter_turns_with_flips_draw_all_eight_views() {
        use image::imageops::{flip_horizontal, flip_vertical, rotate90};
        let img = gradient();
        let mut views = Vec::new();
        for v in [img.clone(), rotate90(&img)] {
            for w in [v.clone(), flip_horizontal(&v)] {
                views.extend([w.clone(), flip_vertical(&w)]);
            }
        }
        let aug = Augment {
            horizontal_flip: true,
            vertical_flip: true,
            quarter_turns: true,
            ..Augment::none()
        };
        let mut seen = [false; 8];
        let mut rng = Rng::new(5);
        for _ in 0..200 {
            let out = aug.apply(&img, &mut rng);
            let k = views
                .iter()
                .position(|v| *v == out)
                .expect("not a symmetry of the patch");
            seen[k] = true;
        }
        assert_eq!(seen, [true; 8]);
    }

    #[test]
    fn small_vertical_shift_moves_rows_by_the_drawn_amount() {
        let img = gradient();
        let aug = Augment {
            height_shift: 2.0 / 48.0,
            ..Augment::none()
        };
        for seed in 0..20 {
            // The only number drawn first is the shift, in Keras' order: U(-2, 2) pixels.
            let tx = Rng::new(seed).range(-aug.height_shift, aug.height_shift) * 48.0;
            let out = aug.apply(&img, &mut Rng::new(seed));
            for (x, y, p) in out.enumerate_pixels() {
                // Output row y samples input row y + tx (bilinear, clamped to the edge); the
                // gradient's green is 5 per row, its red 5 per column (unchanged).
                let want = (5.0 * (y as f64 + tx).clamp(0.0, 47.0)).round() as u8;
                assert_eq!(p[1], want, "seed {seed}, shift {tx:.3}, row {y}");
                assert_eq!(p[0], img.get_pixel(x, y)[0]);
            }
            if tx.abs() > 0.2 {
                assert_ne!(out, img, "seed {seed}: a shift of {tx:.2} moved nothing");
            }
        }
    }

    #[test]
    fn default_augmentation_is_seeded_and_keeps_colours_in_range() {
        let img = gradient();
        let a = Augment::default().apply(&img, &mut Rng::new(9));
        let b = Augment::default().apply(&img, &mut Rng::new(9));
        assert_eq!(a, b);
        assert_ne!(a, img);
        // Nearest fill: no black corners appear from outside the image.
        assert!(a.pixels().all(|p| p[2] == 128));
    }

    #[test]
    fn validation_names_the_key() {
        let err = Augment {
            zoom: 2.0,
            ..Augment::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.contains("augment.zoom"), "{err}");
    }
}
