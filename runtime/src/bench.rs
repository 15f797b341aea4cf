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
    let decode = n as f64 / t.elapsed().as_secs_f64();
    let bs = pipeline.batch_size;
    let batch: Vec<f32> = (0..bs * pre.len())
        .map(|i| ((i * 7919) % 255) as f32 / 255.0)
        .collect();
    model.predict(&batch, bs)?; // warm-up
    let t = Instant::now();
    let mut done = 0;
    while done < n.max(bs * 4) {
        model.predict(&batch, bs)?;
        done += bs;
    }
    let infer = done as f64 / t.elapsed().as_secs_f64();
    let outcome = pipeline.run(model, items, &indicatif::ProgressBar::hidden())?;
    let e2e = n as f64 / outcome.streamed.seconds;
    let bound = 1.0 / (1.0 / decode + 1.0 / infer);
    let rss = crate::evaluate::peak_rss_kib();
    println!(
        "runtime bench: {n} images under {}, batch {bs}, {} on ONNX Runtime {} ({}), {} threads",
        dir.shown(),
        model.provider,
        model.ort_version,
        model.ort_path.shown(),
        model.threads
    );
    println!("  decode + resize only          {decode:>9.0} img/s");
    println!("  pure inference (batch {bs:>4})   {infer:>9.0} img/s");
    println!("  end-to-end eval               {e2e:>9.0} img/s");
    println!(
        "  bound (decode, inference share the cores)  {bound:>6.0} img/s -> end-to-end at {:.0}% of it",
        100.0 * e2e / bound
    );
    println!(
        "  peak RSS                      {:>9} KiB",
        rss.map_or("n/a".into(), |r| r.to_string())
    );
    if let Some(path) = json {
        let j = serde_json::json!({ "images": n, "batch_size": bs, "provider": model.provider, "onnx_runtime": model.ort_version,
            "decode_per_s": decode, "inference_per_s": infer, "end_to_end_per_s": e2e, "bound_per_s": bound, "peak_rss_kib": rss });
        common::fsutil::write_atomic(path, serde_json::to_string_pretty(&j)?.as_bytes())?;
    }
    Ok(())
}
