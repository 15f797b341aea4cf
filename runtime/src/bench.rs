//! `runtime bench`: decode alone, pure inference alone, then both together (the real pipeline)
//! on the same images, and peak memory; the bound the two set when they share the cores.

use crate::pipeline::{Item, Pipeline};
use crate::session::Model;
use anyhow::Result;
use common::Shown;
use std::path::Path;
use std::time::Instant;

/// Decode alone, inference alone, then both together, on the same images.
pub fn run(
    dir: &Path,
    items: &[Item],
    model: &mut Model,
    pipeline: &Pipeline,
    json: Option<&Path>,
) -> Result<()> {
    let pre = model.preprocess;
    pipeline.check_memory(&pre)?;
    let n = items.len();
    let t = Instant::now();
    {
        use rayon::prelude::*;
        let pool = pipeline.decode_pool()?;
        pool.install(|| {
            items.par_chunks(pipeline.batch_size).for_each(|chunk| {
                let mut out = vec![0f32; pre.len()];
                for i in chunk {
                    let _ = pre.load_into(&i.path, &mut out);
                }
            })
        });
    }
    let decode_seconds = t.elapsed().as_secs_f64();
    let bs = pipeline.batch_size;
    let batch = synthetic_batch(bs * pre.len());
    model.predict(&batch, bs)?; // warm-up
    let (batches, inferred) = inference_plan(n, bs);
    let t = Instant::now();
    for _ in 0..batches {
        model.predict(&batch, bs)?;
    }
    let infer_seconds = t.elapsed().as_secs_f64();
    let outcome = pipeline.run(model, items, &indicatif::ProgressBar::hidden())?;
    let r = Rates::new(
        n,
        decode_seconds,
        (inferred, infer_seconds),
        outcome.streamed.seconds,
    );
    let rss = crate::evaluate::peak_rss_kib();
    println!(
        "runtime bench: {n} images under {}, batch {bs}, {} on ONNX Runtime {} ({}), {} threads",
        dir.shown(),
        model.provider,
        model.ort_version,
        model.ort_path.shown(),
        model.threads
    );
    println!("  decode + resize only          {:>9.0} img/s", r.decode);
    println!("  pure inference (batch {bs:>4})   {:>9.0} img/s", r.infer);
    println!("  end-to-end eval               {:>9.0} img/s", r.e2e);
    println!(
        "  bound (decode, inference share the cores)  {:>6.0} img/s -> end-to-end at {:.0}% of it",
        r.bound,
        r.share_of_bound()
    );
    println!(
        "  peak RSS                      {:>9} KiB",
        rss.map_or("n/a".into(), |r| r.to_string())
    );
    if let Some(path) = json {
        let j = serde_json::json!({ "images": n, "batch_size": bs, "provider": model.provider, "onnx_runtime": model.ort_version,
            "decode_per_s": r.decode, "inference_per_s": r.infer, "end_to_end_per_s": r.e2e, "bound_per_s": r.bound, "peak_rss_kib": rss });
        common::fsutil::write_atomic(path, serde_json::to_string_pretty(&j)?.as_bytes())?;
    }
    Ok(())
}

/// Images per second of each stage, and the bound decode and inference set when they share the
/// cores (one image costs 1/decode + 1/infer seconds of them).
#[derive(Debug, PartialEq)]
struct Rates {
    decode: f64,
    infer: f64,
    e2e: f64,
    bound: f64,
}

impl Rates {
    /// `n` images decoded in `decode_seconds`, `inferred` images in `infer_seconds`, and `n` end
    /// to end in `e2e_seconds`.
    fn new(
        n: usize,
        decode_seconds: f64,
        (inferred, infer_seconds): (usize, f64),
        e2e_seconds: f64,
    ) -> Self {
        let decode = n as f64 / decode_seconds;
        let infer = inferred as f64 / infer_seconds;
        Rates {
            decode,
            infer,
            e2e: n as f64 / e2e_seconds,
            bound: 1.0 / (1.0 / decode + 1.0 / infer),
        }
    }

    /// End to end as a percentage of the bound.
    fn share_of_bound(&self) -> f64 {
        100.0 * self.e2e / self.bound
    }
}

/// The batches of pure inference to time (enough for every image, and at least four), and the
/// images they hold.
fn inference_plan(images: usize, batch_size: usize) -> (usize, usize) {
    let batches = images.max(batch_size * 4).div_ceil(batch_size);
    (batches, batches * batch_size)
}

/// Inputs for pure inference: varied values in [0, 1], as preprocessed pixels are.
fn synthetic_batch(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_images_over_seconds_and_the_bound_shares_the_cores() {
        let r = Rates::new(120, 0.4, (600, 4.0), 1.5);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9 * b;
        assert!(
            near(r.decode, 300.0) && near(r.infer, 150.0) && near(r.e2e, 80.0),
            "{r:?}"
        );
        // 1 / (1/300 + 1/150) = 100 img/s; 80 of it is 80%.
        assert!(near(r.bound, 100.0), "{r:?}");
        assert!(near(r.share_of_bound(), 80.0), "{}", r.share_of_bound());
    }

    #[test]
    fn inference_runs_every_image_and_at_least_four_batches() {
        assert_eq!(inference_plan(10, 32), (4, 128));
        assert_eq!(inference_plan(1000, 32), (32, 1024));
        assert_eq!(inference_plan(1024, 256), (4, 1024));
        assert_eq!(inference_plan(1025, 256), (5, 1280));
    }

    #[test]
    fn the_synthetic_batch_is_varied_and_in_range() {
        let b = synthetic_batch(1000);
        assert_eq!(b.len(), 1000);
        assert!(b.iter().all(|v| (0.0..=1.0).contains(v)), "{b:?}");
        assert_eq!(
            b[1],
            14.0 / 255.0,
            "7919 % 255 = 14: the same numbers every run"
        );
        let distinct: std::collections::BTreeSet<u32> = b.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() > 100, "{} distinct values", distinct.len());
    }
}
