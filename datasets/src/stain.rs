//! Colour augmentation for H&E: what changes most from one patient's slides to the next is the
//! stain. Two kinds, both off in the tutorial's config:
//!
//! - **HED jitter** (Tellez et al. 2018, 2019): each pixel's optical density is unmixed into
//!   hematoxylin, eosin and DAB concentrations with Ruifrok & Johnston's colour deconvolution
//!   (2001; the matrix scikit-image uses), each concentration `c` becomes `c * a + b` with `a` and
//!   `b` drawn per image and channel from U(1 - s, 1 + s) and U(-s, s), and the pixel is mixed
//!   back. Tellez et al. call s = 0.05 "HED-light" and 0.2 "HED-strong" (`b` in optical density).
//! - **Brightness, contrast, saturation, hue** jitter, in that order: brightness, contrast and
//!   saturation as torchvision's `ColorJitter` defines them; hue as a rotation of the chroma plane
//!   in YIQ (torchvision shifts H in HSV; the rotation is cheaper and keeps luminance).
//!
//! Every number comes from the image's own seeded stream, after the geometric augmentation's.

use crate::rng::Rng;
use image::RgbImage;

/// Ruifrok & Johnston's stain vectors (rows: hematoxylin, eosin, DAB), unit length, as
/// scikit-image's `rgb_from_hed`.
const RGB_FROM_HED: [[f32; 3]; 3] = [
    [0.650, 0.704, 0.286],
    [0.072, 0.990, 0.105],
    [0.268, 0.570, 0.776],
];

/// The inverse of `RGB_FROM_HED` (optical density to concentrations).
fn hed_from_rgb() -> [[f32; 3]; 3] {
    let m = normalized(RGB_FROM_HED);
    invert(m)
}

fn normalized(m: [[f32; 3]; 3]) -> [[f32; 3]; 3] {
    m.map(|r| {
        let n = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
        r.map(|v| v / n)
    })
}

fn invert(m: [[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let c =
        |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    [
        [
            c(1, 1, 2, 2) / det,
            -c(0, 1, 2, 2) / det,
            c(0, 1, 1, 2) / det,
        ],
        [
            -c(1, 0, 2, 2) / det,
            c(0, 0, 2, 2) / det,
            -c(0, 0, 1, 2) / det,
        ],
        [
            c(1, 0, 2, 1) / det,
            -c(0, 0, 2, 1) / det,
            c(0, 0, 1, 1) / det,
        ],
    ]
}

/// Optical density of an 8-bit intensity: -ln((v + 1) / 256), so 0 and 255 stay finite.
fn od_table() -> [f32; 256] {
    std::array::from_fn(|v| -((v as f32 + 1.0) / 256.0).ln())
}

/// Stain jitter settings (all 0 = off).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StainJitter {
    pub hed: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
}

impl StainJitter {
    pub fn is_off(&self) -> bool {
        *self == StainJitter::default()
    }

    /// Applies the jitter to `img` in place, drawing from `rng` (nothing is drawn for settings
    /// that are 0).
    pub fn apply(&self, img: &mut RgbImage, rng: &mut Rng) {
        if self.hed > 0.0 {
            let s = self.hed;
            let alpha: [f32; 3] = std::array::from_fn(|_| rng.range(1.0 - s, 1.0 + s) as f32);
            let beta: [f32; 3] = std::array::from_fn(|_| rng.range(-s, s) as f32);
            hed_jitter(img, alpha, beta);
        }
        let factor = |r: f64, rng: &mut Rng| {
            (r > 0.0).then(|| rng.range((1.0 - r).max(0.0), 1.0 + r) as f32)
        };
        let brightness = factor(self.brightness, rng);
        let contrast = factor(self.contrast, rng);
        let saturation = factor(self.saturation, rng);
        let hue = (self.hue > 0.0).then(|| rng.range(-self.hue, self.hue) as f32);
        if brightness.is_none() && contrast.is_none() && saturation.is_none() && hue.is_none() {
            return;
        }
        bcsh(img, brightness, contrast, saturation, hue);
    }
}

/// HED jitter of every pixel: concentrations `c * alpha + beta`, mixed back to RGB.
fn hed_jitter(img: &mut RgbImage, alpha: [f32; 3], beta: [f32; 3]) {
    let od = od_table();
    let to_hed = hed_from_rgb();
    let to_rgb = normalized(RGB_FROM_HED);
    for px in img.pixels_mut() {
        let d = [od[px[0] as usize], od[px[1] as usize], od[px[2] as usize]];
        // Concentrations: d (row vector) times the inverse stain matrix. Not clamped at 0 (as
        // scikit-image's rgb2hed is): a negative value is the part of the colour the three stains
        // do not explain, and keeping it makes a zero jitter give back the same pixel.
        let c: [f32; 3] = std::array::from_fn(|j| {
            let v = d[0] * to_hed[0][j] + d[1] * to_hed[1][j] + d[2] * to_hed[2][j];
            v * alpha[j] + beta[j]
        });
        for k in 0..3 {
            let density = c[0] * to_rgb[0][k] + c[1] * to_rgb[1][k] + c[2] * to_rgb[2][k];
            px[k] = (256.0 * (-density).exp() - 1.0).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Brightness, contrast and saturation as torchvision's `ColorJitter` applies them; hue as a
/// YIQ chroma rotation.
fn bcsh(img: &mut RgbImage, b: Option<f32>, c: Option<f32>, s: Option<f32>, h: Option<f32>) {
    let n = (img.width() * img.height()) as usize;
    let mut rgb: Vec<[f32; 3]> = img
        .pixels()
        .map(|p| p.0.map(|v| v as f32 / 255.0))
        .collect();
    let gray = |p: &[f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let clamp = |v: f32| v.clamp(0.0, 1.0);
    if let Some(b) = b {
        rgb.iter_mut().for_each(|p| *p = p.map(|v| clamp(v * b)));
    }
    if let Some(c) = c {
        let mean = rgb.iter().map(gray).sum::<f32>() / n.max(1) as f32;
        rgb.iter_mut()
            .for_each(|p| *p = p.map(|v| clamp((v - mean) * c + mean)));
    }
    if let Some(s) = s {
        rgb.iter_mut().for_each(|p| {
            let g = gray(p);
            *p = p.map(|v| clamp((v - g) * s + g));
        });
    }
    if let Some(h) = h {
        // Rotate the chroma plane (I, Q) of YIQ by h turns.
        let (sin, cos) = (h * std::f32::consts::TAU).sin_cos();
        rgb.iter_mut().for_each(|p| {
            let y = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
            let i = 0.596 * p[0] - 0.274 * p[1] - 0.322 * p[2];
            let q = 0.211 * p[0] - 0.523 * p[1] + 0.312 * p[2];
            let (i, q) = (i * cos - q * sin, i * sin + q * cos);
            *p = [
                clamp(y + 0.956 * i + 0.621 * q),
                clamp(y - 0.272 * i - 0.647 * q),
                clamp(y - 1.106 * i + 1.703 * q),
            ];
        });
    }
    for (px, p) in img.pixels_mut().zip(&rgb) {
        px.0 = p.map(|v| (v * 255.0).round() as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn he_like() -> RgbImage {
        // Purple nuclei on pink stroma on white background.
        RgbImage::from_fn(48, 48, |x, y| match (x / 16, y / 16) {
            (0, _) => Rgb([90, 50, 140]),
            (1, _) => Rgb([230, 150, 190]),
            _ => Rgb([245, 245, 245]),
        })
    }

    #[test]
    fn deconvolution_round_trips_without_jitter() {
        let img = he_like();
        let mut out = img.clone();
        hed_jitter(&mut out, [1.0; 3], [0.0; 3]);
        for (a, b) in img.pixels().zip(out.pixels()) {
            for k in 0..3 {
                assert!((a[k] as i32 - b[k] as i32).abs() <= 1, "{a:?} -> {b:?}");
            }
        }
    }

    #[test]
    fn more_hematoxylin_darkens_nuclei_towards_blue() {
        let mut out = he_like();
        hed_jitter(&mut out, [1.5, 1.0, 1.0], [0.0; 3]);
        let (before, after) = (he_like().get_pixel(0, 0).0, out.get_pixel(0, 0).0);
        // Hematoxylin absorbs red most: red falls most.
        assert!(
            after[0] < before[0]
                && after[0] as i32 - (before[0] as i32) < after[2] as i32 - before[2] as i32,
            "{before:?} -> {after:?}"
        );
        // White background stays nearly white (no stain to scale).
        assert!(out.get_pixel(40, 40)[0] >= 240);
    }

    #[test]
    fn jitter_is_seeded_off_draws_nothing_and_each_part_acts() {
        let img = he_like();
        assert!(StainJitter::default().is_off());
        let mut rng = Rng::new(3);
        let mut same = img.clone();
        StainJitter::default().apply(&mut same, &mut rng);
        assert_eq!(same, img);
        assert_eq!(
            rng.next_u64(),
            Rng::new(3).next_u64(),
            "off must draw no numbers"
        );
        for j in [
            StainJitter {
                hed: 0.2,
                ..Default::default()
            },
            StainJitter {
                brightness: 0.3,
                ..Default::default()
            },
            StainJitter {
                contrast: 0.3,
                ..Default::default()
            },
            StainJitter {
                saturation: 0.3,
                ..Default::default()
            },
            StainJitter {
                hue: 0.1,
                ..Default::default()
            },
        ] {
            let (mut a, mut b) = (img.clone(), img.clone());
            j.apply(&mut a, &mut Rng::new(9));
            j.apply(&mut b, &mut Rng::new(9));
            assert_eq!(a, b, "{j:?} not seeded");
            assert_ne!(a, img, "{j:?} changed nothing");
        }
    }

    #[test]
    fn inverse_matrix_is_an_inverse() {
        let (m, inv) = (normalized(RGB_FROM_HED), hed_from_rgb());
        for i in 0..3 {
            for j in 0..3 {
                let v: f32 = (0..3).map(|k| m[i][k] * inv[k][j]).sum();
                assert!((v - f32::from(i == j)).abs() < 1e-5);
            }
        }
    }
}
