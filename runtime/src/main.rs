//! `runtime eval|predict|heatmap|slide|bench`: CancerNet over folders of patches, or whole-slide
//! images, with ONNX Runtime.

use anyhow::{Result, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use common::Shown;
use common::cli::{MAX_THREADS, choice, exit_code, float_in, int_in, probability, progress_bar};
use datasets::preprocess::{Filter, MAX_SIZE, MIN_SIZE, Preprocess};
use datasets::scale::PatchScale;
use runtime::evaluate::{self, RunInfo, Tally};
use runtime::pipeline::{self, Pipeline, Streamed};
use runtime::session::{Ep, Model, Options};
use runtime::settings::{self, Flags, Resolved};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Batch inference over IDC patches with ONNX Runtime (CPU or CUDA).
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(ClapArgs, Clone)]
struct ModelArgs {
    /// The ONNX model (from `exporter`).
    #[arg(long, default_value = "models/cancernet.onnx")]
    model: PathBuf,
    /// Execution provider: auto tries CUDA then CPU; cuda fails loudly when it cannot run.
    #[arg(long, value_parser = choice::<Ep>(), default_value_t = Ep::Auto)]
    ep: Ep,
    /// Images per inference batch (1 to 65536).
    #[arg(long, default_value_t = 256, value_parser = int_in::<1, 65536>)]
    batch_size: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0, value_parser = int_in::<0, MAX_THREADS>)]
    threads: usize,
    /// Decode threads (0 = one per core).
    #[arg(long, default_value_t = 0, value_parser = int_in::<0, MAX_THREADS>)]
    decode_threads: usize,
    /// The ONNX Runtime library (default: $ORT_DYLIB_PATH, the project's .venv, python's onnxruntime).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Refuse ONNX files larger than this many bytes (a model from elsewhere is input too).
    #[arg(long, default_value_t = runtime::session::MAX_MODEL_BYTES)]
    max_model_bytes: u64,
    /// Input side, for a model without the exporter's metadata (8 to 1024; resized with
    /// --resize-filter, default nearest).
    #[arg(long, value_parser = input_size)]
    input_size: Option<u32>,
    /// Resize filter, for a model without the exporter's metadata (with --input-size).
    #[arg(long, value_parser = choice::<Filter>(), requires = "input_size")]
    resize_filter: Option<Filter>,
}

#[derive(ClapArgs)]
struct OutputArgs {
    /// Probability of IDC at or above which a patch is called IDC, in [0, 1] (default: the
    /// model's own, from its metadata, unless it was chosen on validation with other neighbour
    /// context than this run's; else 0.5).
    #[arg(long, value_parser = probability)]
    threshold: Option<f64>,
    /// Add per-patient rows (patches, IDC share true vs predicted, accuracy).
    #[arg(long)]
    patients: bool,
    /// Write the whole report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one CSV row per image (path, patient, x, y, label, probability, prediction).
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// Exit with an error when any file was skipped (unusable, colliding, Kaggle duplicate).
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    context: ContextArgs,
}

#[derive(ClapArgs)]
struct ContextArgs {
    /// Neighbour context: average each patch's IDC log-odds with those of its grid neighbours on
    /// the same slide (same patient, x and y from the Kaggle file names 50 px apart). For whole
    /// slides, or any set of a slide's patches; docs/accuracy.md measures it. --context=false
    /// turns off a model's own [default: as the model's metadata says (the trainer's
    /// eval.context, written by the exporter), else off]
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    context: Option<bool>,
    /// Each neighbour's weight against the patch's own 1, in (0, 4]; implies --context (an
    /// error with --context=false) [default: the model's, else 0.5]
    #[arg(long, value_parser = context_weight)]
    context_weight: Option<f64>,
}

#[derive(Subcommand)]
enum Command {
    /// Classify every patch under DIR and print the classification report (labels from 0/ 1/
    /// folders or the file names' class<C>).
    Eval {
        dir: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        out: OutputArgs,
        /// Plot the ROC curve to this PNG.
        #[arg(long)]
        roc: Option<PathBuf>,
    },
    /// Classify every image under DIR (no labels needed); prints a summary, --predictions has the rows.
    Predict {
        dir: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Put every patch back on its slide and write, per patient, tissue | predicted IDC | true IDC.
    Heatmap {
        dir: PathBuf,
        /// Folder for heatmap_<patient>.png.
        #[arg(long, default_value = "reports/heatmaps")]
        out: PathBuf,
        /// Pixels per patch / 50, above 0 and at most 4.
        #[arg(long, default_value_t = 0.5, value_parser = scale)]
        scale: f32,
        /// Only these patients (default: all).
        #[arg(long = "patient")]
        only: Vec<String>,
        /// At most this many patients (the first by patient id).
        #[arg(long, value_parser = int_in::<1, { usize::MAX }>)]
        max_patients: Option<usize>,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        context: ContextArgs,
        /// Exit with an error when any file or patient was skipped.
        #[arg(long)]
        strict: bool,
    },
    /// Classify whole-slide images (Aperio .svs, generic tiled TIFF, NDPI, MIRAX, ... through
    /// OpenSlide) tile by tile at the model's patch scale; per slide a folder OUT/<name>/ with
    /// tiles.csv, heatmap.png, summary.json (areas in mm²) and idc.geojson (QuPath annotations).
    Slide {
        #[arg(required = true)]
        slides: Vec<PathBuf>,
        /// Folder for the slides' folders.
        #[arg(long, default_value = "reports/slides")]
        out: PathBuf,
        /// Microns per pixel at level 0 of every slide given, over what a slide says (0.05 to
        /// 100; about 0.25 at 40x, 0.5 at 20x): for slides that do not say it, or say it wrong.
        #[arg(long, value_parser = mpp)]
        mpp: Option<f64>,
        /// A tile with less tissue than this share (in [0, 1]) is background, not classified.
        #[arg(long, default_value_t = runtime::slide::grid::DEFAULT_MIN_TISSUE, value_parser = probability)]
        min_tissue: f64,
        /// Longest side of the slide's picture in heatmap.png, in pixels (64 to 16384; a tile
        /// gets at least one pixel).
        #[arg(long, default_value_t = runtime::slide::thumbnail::DEFAULT_SIDE, value_parser = thumbnail_side)]
        thumbnail: u32,
        /// Probability of IDC at or above which a tile is called IDC, in [0, 1] (default: as
        /// for eval: the model's own when it holds for this run's context, else 0.5).
        #[arg(long, value_parser = probability)]
        threshold: Option<f64>,
        /// The OpenSlide library (default: $OPENSLIDE_LIB, the project's .venv, python's
        /// openslide_bin, the system's libopenslide).
        #[arg(long)]
        openslide_lib: Option<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        context: ContextArgs,
    },
    /// Measure decode, pure inference and end-to-end images/s over DIR, and peak memory.
    Bench {
        dir: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Write the numbers as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn input_size(s: &str) -> Result<u32, String> {
    int_in::<{ MIN_SIZE as usize }, { MAX_SIZE as usize }>(s).map(|v| v as u32)
}

fn context_weight(s: &str) -> Result<f64, String> {
    float_in(s, 0.0, evaluation::context::MAX_WEIGHT, true)
}

fn mpp(s: &str) -> Result<f64, String> {
    let r = datasets::scale::MPP;
    float_in(s, *r.start(), *r.end(), false)
}

fn thumbnail_side(s: &str) -> Result<u32, String> {
    int_in::<64, 16384>(s).map(|v| v as u32)
}

fn scale(s: &str) -> Result<f32, String> {
    float_in(s, 0.0, 4.0, true).map(|v| v as f32)
}

fn main() -> ExitCode {
    limit_heap_growth();
    exit_code(run(Args::parse()))
}

/// glibc raises its mmap threshold after large blocks are freed, after which every batch buffer
/// comes from the heap and fragments it: peak memory then creeps up with the number of batches.
/// A fixed threshold keeps batch-sized buffers in mmap, so memory stays flat however many images.
fn limit_heap_growth() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn open(args: &ModelArgs) -> Result<Model> {
    let preprocess = args.input_size.map(|size| Preprocess {
        size,
        filter: args.resize_filter.unwrap_or(Filter::Nearest),
    });
    Model::open(
        &args.model,
        &Options {
            ep: args.ep,
            threads: args.threads,
            ort_lib: args.ort_lib.as_deref(),
            preprocess,
            max_model_bytes: args.max_model_bytes,
        },
    )
}

fn flags(threshold: Option<f64>, c: &ContextArgs) -> Flags {
    Flags {
        threshold,
        context: c.context,
        context_weight: c.context_weight,
    }
}

fn pipeline_of(args: &ModelArgs) -> Pipeline {
    Pipeline {
        batch_size: args.batch_size,
        decode_threads: args.decode_threads,
    }
}

/// The size and scale of the patches the model was trained on, and where they come from.
fn patch_scale(m: &Model, path: &Path) -> Result<(PatchScale, String)> {
    Ok(match &m.contract.scale {
        Ok(Some(p)) => (*p, "from the model's metadata".to_string()),
        Ok(None) => (
            PatchScale::default(),
            "the Kaggle dataset's; the model's metadata has none (exported before it was written)"
                .into(),
        ),
        Err(e) => bail!("{}: {e}", path.shown()),
    })
}

/// Streams every image under `dir` through the model into a `Tally` (predictions CSV included).
fn classify(dir: &Path, args: &ModelArgs, out: &OutputArgs) -> Result<(Tally, Streamed, RunInfo)> {
    let total = pipeline::count(dir)?;
    let mut model = open(args)?;
    let Resolved { threshold, context } = Resolved::new(
        &model.contract,
        flags(out.threshold, &out.context),
        &args.model,
    )?;
    let mut tally = Tally::new(threshold.value, out.predictions.as_deref(), context)?;
    let streamed = pipeline_of(args).stream(
        &mut model,
        pipeline::items(dir)?,
        &progress_bar(total as u64, "classify"),
        |_, item, p| tally.add(item, p),
    )?;
    let context = tally.settle()?;
    let mut info = RunInfo::new(
        &args.model,
        &model,
        args.batch_size,
        tally.images,
        &streamed,
        threshold,
    );
    info.context = context;
    Ok((tally, streamed, info))
}

fn finish(
    mut tally: Tally,
    streamed: &Streamed,
    info: &RunInfo,
    out: &OutputArgs,
    labelled: bool,
) -> Result<()> {
    let report = if labelled { tally.report() } else { None };
    let patients = tally.patient_rows();
    println!("{}", info.header());
    match &report {
        Some(r) => println!("\n{r}"),
        None if labelled => println!(
            "\nno labelled images (labels come from 0/ 1/ folders or class<C> in the file name)"
        ),
        None => println!(
            "\n{} images: {} predicted IDC, {} predicted no IDC (threshold {})",
            info.images,
            tally.predicted_idc,
            info.images - tally.predicted_idc,
            info.threshold.value
        ),
    }
    if out.patients {
        print!("{}", evaluation::patients::table(&patients));
    }
    print!("{}", evaluate::skipped_text(streamed, 20));
    if let Some(path) = &out.json {
        evaluate::write_json(path, info, report.as_ref(), &patients, streamed)?;
    }
    if out.strict && streamed.skipped() > 0 {
        // The predictions CSV is not put in place: a strict run that skipped is a failed run.
        bail!(
            "{} files could not be used (--strict); they are listed above",
            streamed.skipped()
        );
    }
    tally.finish()?;
    Ok(())
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Eval {
            dir,
            model,
            out,
            roc,
        } => {
            let (tally, streamed, info) = classify(&dir, &model, &out)?;
            if let Some(path) = &roc {
                tally.write_roc(path)?;
            }
            finish(tally, &streamed, &info, &out, true)
        }
        Command::Predict { dir, model, out } => {
            let (tally, streamed, info) = classify(&dir, &model, &out)?;
            finish(tally, &streamed, &info, &out, false)
        }
        Command::Heatmap {
            dir,
            out,
            scale,
            only,
            max_patients,
            model,
            context,
            strict,
        } => {
            let selected = runtime::heatmap::select(&dir, &only, max_patients)?;
            let mut m = open(&model)?;
            let c = &context;
            let context =
                settings::context(&m.contract, c.context, c.context_weight, &model.model)?;
            let pipeline = pipeline_of(&model);
            runtime::heatmap::run(selected, &mut m, &pipeline, context, &out, scale, strict)
        }
        Command::Slide {
            slides,
            out,
            mpp,
            min_tissue,
            thumbnail,
            threshold,
            openslide_lib,
            model,
            context,
        } => {
            let lib = runtime::openslide::load(openslide_lib.as_deref())?;
            let mut m = open(&model)?;
            let resolved = Resolved::new(&m.contract, flags(threshold, &context), &model.model)?;
            let (patch, patch_source) = patch_scale(&m, &model.model)?;
            let settings = runtime::slide::Settings {
                out,
                mpp,
                min_tissue,
                thumbnail,
                patch,
                patch_source,
                threshold: resolved.threshold,
                context: resolved.context,
                pipeline: pipeline_of(&model),
            };
            runtime::slide::run_all(&slides, &mut m, &model.model, &settings, lib)
        }
        Command::Bench { dir, model, json } => {
            let items = pipeline::list(&dir)?.images;
            let mut m = open(&model)?;
            runtime::bench::run(&dir, &items, &mut m, &pipeline_of(&model), json.as_deref())
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use std::hint::black_box;

    /// Blocks glibc has served with mmap, now.
    fn mmapped() -> usize {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        unsafe { libc::mallinfo2() }.hblks
    }

    #[test]
    fn batch_buffers_stay_mmapped_after_larger_ones_are_freed() {
        super::limit_heap_growth();
        // Freeing a large mmapped block raises glibc's own threshold to its size, after which
        // batch-sized buffers would come from the heap; the fixed threshold keeps them mmapped.
        drop(black_box(vec![1u8; 8 << 20]));
        let before = mmapped();
        let batch = black_box(vec![1u8; 1 << 20]);
        assert_eq!(mmapped(), before + 1, "a 1 MiB buffer is mmapped");
        let small = black_box(vec![1u8; 64 << 10]);
        assert_eq!(mmapped(), before + 1, "a 64 KiB one comes from the heap");
        drop((batch, small));
    }
}
