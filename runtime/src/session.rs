//! The one place that decides the execution provider, then an ONNX Runtime session that takes
//! image batches and returns IDC probabilities.

use crate::ortlib::{self, OrtLib};
use anyhow::{Context, Result, anyhow, bail};
use common::Shown;
use common::choice::Choice;
use contract::Contract;
use datasets::preprocess::{MAX_SIZE, MIN_SIZE, Preprocess};
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorRef, ValueType};
use std::collections::HashMap;
use std::path::Path;

/// Which execution provider to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ep {
    Auto,
    Cpu,
    Cuda,
}

impl Choice for Ep {
    const CHOICES: &'static [(Ep, &'static str, &'static str)] = &[
        (
            Ep::Auto,
            "auto",
            "CUDA when it can be used, else CPU (the report says which ran)",
        ),
        (Ep::Cpu, "cpu", ""),
        (
            Ep::Cuda,
            "cuda",
            "CUDA or a clear error (never a silent CPU run)",
        ),
    ];
}

common::display_as_choice!(Ep);

/// A loaded model: the session, what it expects, and where it runs.
pub struct Model {
    pub session: Session,
    pub input: String,
    pub output: String,
    pub preprocess: Preprocess,
    /// What the model's metadata says (`contract`): threshold, context, scale, TTA.
    pub contract: Contract,
    /// "CPUExecutionProvider" or "CUDAExecutionProvider".
    pub provider: &'static str,
    pub ort_version: String,
    /// The ONNX Runtime library this process loaded.
    pub ort_path: std::path::PathBuf,
    pub threads: usize,
}

pub struct Options<'a> {
    pub ep: Ep,
    /// Intra-op threads (0 = ONNX Runtime's default, one per core).
    pub threads: usize,
    pub ort_lib: Option<&'a Path>,
    /// Preprocessing for a model without the exporter's metadata.
    pub preprocess: Option<Preprocess>,
    /// Larger ONNX files are refused before ONNX Runtime parses them.
    pub max_model_bytes: u64,
}

/// The default cap on an ONNX file's size: CancerNet is ~5 MB; a model is input too.
pub const MAX_MODEL_BYTES: u64 = 256 << 20;

impl Model {
    pub fn open(path: &Path, opts: &Options) -> Result<Model> {
        if !path.is_file() {
            bail!(
                "model {} does not exist: run `exporter --out {}` first (or pass --model)",
                path.shown(),
                path.shown()
            );
        }
        let bytes = std::fs::metadata(path)
            .with_context(|| format!("cannot read model {}", path.shown()))?
            .len();
        if bytes > opts.max_model_bytes {
            bail!(
                "model {} is {bytes} bytes, over the {}-byte limit for a model (--max-model-bytes raises it)",
                path.shown(),
                opts.max_model_bytes
            );
        }
        let lib = ortlib::load(opts.ort_lib)?;
        let (session, provider) = match opts.ep {
            Ep::Cpu => (
                build(lib, path, opts.threads, false)?,
                "CPUExecutionProvider",
            ),
            Ep::Cuda => (
                build(lib, path, opts.threads, true).map_err(|e| cuda_error(lib, e))?,
                "CUDAExecutionProvider",
            ),
            Ep::Auto => match build(lib, path, opts.threads, true) {
                Ok(s) => (s, "CUDAExecutionProvider"),
                Err(_) => (
                    build(lib, path, opts.threads, false)?,
                    "CPUExecutionProvider",
                ),
            },
        };
        let input = image_input(&session, path)?;
        let output = probabilities_output(&session, path)?;
        let contract = Contract::from_metadata(&metadata(&session)?);
        let preprocess = match (&contract.preprocess, opts.preprocess) {
            (Ok(p), _) => *p,
            (Err(_), Some(p)) => p,
            (Err(e), None) => bail!(
                "{} has no usable preprocessing metadata ({e}); export it with `exporter`, or pass --input-size and --resize-filter",
                path.shown()
            ),
        };
        if let Some(side) = input_sides(&session)
            .into_iter()
            .find(|&s| s != preprocess.size as i64)
        {
            bail!(
                "{}: the model's input side is {side} but its preprocessing says {}",
                path.shown(),
                preprocess.size
            );
        }
        if let Err(why) = &contract.classes {
            bail!("{}: {why}", path.shown());
        }
        let threads = common::cli::threads_or_cores(opts.threads);
        Ok(Model {
            session,
            input,
            output,
            preprocess,
            contract,
            provider,
            ort_version: lib.version.clone(),
            ort_path: lib.path.clone(),
            threads,
        })
    }

    /// IDC probabilities for `n` images laid out as `[n, 3, size, size]`.
    pub fn predict(&mut self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        let s = self.preprocess.size as usize;
        let input =
            TensorRef::from_array_view(([n, 3, s, s], images)).map_err(|e| anyhow!("{e}"))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => input])
            .map_err(|e| anyhow!("inference failed: {e}"))?;
        let (shape, probs) = outputs[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("{e}"))?;
        let classes = shape.last().copied().unwrap_or(0) as usize;
        if classes != 2 || probs.len() != n * classes {
            bail!(
                "model output \"{}\" has shape {:?}, expected [{n}, 2] (no IDC, IDC)",
                self.output.shown(),
                &**shape
            );
        }
        Ok(probs.chunks(classes).map(|p| p[1]).collect())
    }
}

fn build(lib: &OrtLib, path: &Path, threads: usize, cuda: bool) -> ort::Result<Session> {
    let mut b = Session::builder(&lib.env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        // Memory patterns are planned per input shape; with many batches (and a smaller last one)
        // they made peak memory creep up with the number of images.
        .with_memory_pattern(false)?;
    if threads > 0 {
        b = b.with_intra_threads(threads)?;
    }
    if cuda {
        b = b.with_execution_providers([ep::CUDA::default().build().error_on_failure()])?;
    }
    b.commit_from_file(path)
}

fn cuda_error(lib: &OrtLib, e: ort::Error) -> anyhow::Error {
    let compiled_in = ep::CUDA::is_available().unwrap_or(false);
    let why = if compiled_in {
        "the CUDA provider is in this ONNX Runtime but could not start (no GPU or driver, or the CUDA 12/13 and cuDNN 9 \
         runtime libraries are not on LD_LIBRARY_PATH: `pip install onnxruntime-gpu[cuda,cudnn]`)"
    } else {
        "this ONNX Runtime library has no CUDA provider: install the `onnxruntime-gpu` wheel and point --ort-lib at its \
         onnxruntime/capi/libonnxruntime.so.*"
    };
    anyhow!(
        "--ep cuda cannot be used with {} (ONNX Runtime {}): {why}; details: {e}",
        lib.path.shown(),
        lib.version
    )
}

fn image_input(session: &Session, path: &Path) -> Result<String> {
    let inputs = session.inputs();
    let [input] = inputs else {
        bail!(
            "{} has {} inputs; an image classifier has one ([batch, 3, H, W] float32)",
            path.shown(),
            inputs.len()
        )
    };
    let side_ok = |d: i64| d == -1 || (MIN_SIZE as i64..=MAX_SIZE as i64).contains(&d);
    match input.dtype() {
        ValueType::Tensor {
            ty: ort::value::TensorElementType::Float32,
            shape,
            ..
        } if shape.len() == 4
            && (shape[1] == 3 || shape[1] == -1)
            && side_ok(shape[2])
            && side_ok(shape[3])
            && (shape[2] == shape[3] || shape[2] == -1 || shape[3] == -1) =>
        {
            Ok(input.name().to_string())
        }
        other => bail!(
            "{}: input \"{}\" is {}, not a square image tensor [batch, 3, H, H] of float32 with H in [{MIN_SIZE}, {MAX_SIZE}]",
            path.shown(),
            input.name().shown(),
            other.to_string().shown()
        ),
    }
}

/// The input's fixed sides (height, width; a side the model leaves open is not listed).
fn input_sides(session: &Session) -> Vec<i64> {
    match session.inputs()[0].dtype() {
        ValueType::Tensor { shape, .. } => shape[2..].iter().copied().filter(|&d| d > 0).collect(),
        _ => Vec::new(),
    }
}

/// The output the report reads: `probabilities`, else the first; float32 `[batch, 2]` (no IDC,
/// IDC), or a dimension the model leaves open (then `predict` checks each batch).
fn probabilities_output(session: &Session, path: &Path) -> Result<String> {
    let outputs = session.outputs();
    let output = outputs
        .iter()
        .find(|o| o.name() == "probabilities")
        .or_else(|| outputs.first())
        .with_context(|| format!("{} has no outputs", path.shown()))?;
    match output.dtype() {
        ValueType::Tensor {
            ty: ort::value::TensorElementType::Float32,
            shape,
            ..
        } if shape.len() == 2 && (shape[1] == 2 || shape[1] == -1) => Ok(output.name().to_string()),
        other => bail!(
            "{}: output \"{}\" is {}, not the class probabilities [batch, 2] of float32 the report needs \
             (class 0 no IDC, class 1 IDC)",
            path.shown(),
            output.name().shown(),
            other.to_string().shown()
        ),
    }
}

fn metadata(session: &Session) -> Result<HashMap<String, String>> {
    let md = session.metadata().map_err(|e| anyhow!("{e}"))?;
    let mut map = HashMap::new();
    for key in md.custom_keys().map_err(|e| anyhow!("{e}"))? {
        if let Some(v) = md.custom(&key) {
            map.insert(key, v);
        }
    }
    Ok(map)
}
