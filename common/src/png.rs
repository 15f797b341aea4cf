//! PNG encoding for what the tools write (synthetic patches, plots, heatmaps): fast compression.

use anyhow::Result;
use image::RgbImage;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};

/// PNG bytes of an image, fast compression.
pub fn encode(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(8 << 10);
    let enc = PngEncoder::new_with_quality(&mut buf, CompressionType::Fast, FilterType::Adaptive);
    img.write_with_encoder(enc)?;
    Ok(buf)
}
