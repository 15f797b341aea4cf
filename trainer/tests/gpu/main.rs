//! The GPU code path, run for real: burn's cubecl backends run CancerNet with its own CubeCL
//! kernels (`models::cube`, each checked here against burn's ops), with batches on a device,
//! autodiff, the optimizer, BatchNorm
//! statistics, checkpoints written from device tensors and exported from them. On `wgpu` this
//! runs anywhere with a Vulkan device, Mesa's lavapipe on the CPU included, which is how CI runs
//! it on every build (`make test`, which builds the tests with `--features trainer/wgpu,trainer/cuda`);
//! the same suite runs on `cuda` where a GPU is present.
//!
//! Without a device the wgpu tests print `SKIPPED` with what to install (under
//! `IDC_REQUIRE_ALL`, as in `make test`, they fail instead); the CUDA ones, where there is no GPU,
//! check the error that says so and are counted apart as "no GPU" (a build without CUDA fails them
//! under `IDC_REQUIRE_ALL`).
//!
//! The suite's parts, each run on every backend by the `wgpu` and `cuda` modules below: each
//! kernel against burn's ops (`kernels`, `batch_norm`) and at the edges of its shapes (`empty`),
//! training steps against the CPU's
//! (`steps`), and the commands on the device (`runs`); here also the helpers they share.
#![cfg(any(feature = "wgpu", feature = "cuda"))]
#![allow(dead_code)] // each backend uses the suite's parts it can

mod batch_norm;
mod empty;
mod kernels;
mod runs;
mod steps;

use batch_norm::batch_norm_kernels_match_burns;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use empty::empty_shapes_give_empty_results;
use kernels::kernels_match_burns;
use runs::{resume_across_devices, whole_run_exports_and_evaluates};
use steps::steps_match_flex;

/// The largest absolute difference between two tensors.
fn max_diff<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// Pseudo-random values in [-1, 1) from `seed` (xorshift): the same data for both backends.
fn data(dims: &[usize], seed: u64) -> TensorData {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    TensorData::new(values, dims.to_vec())
}

/// `d + offset`.
fn shifted(d: TensorData, offset: f32) -> TensorData {
    let values = d.iter::<f32>().map(|v| v + offset).collect();
    TensorData::new(values, d.shape.clone())
}

/// A tensor of data on a backend's device, tracked for gradients.
fn leaf<B: AutodiffBackend, const D: usize>(d: &TensorData, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(d.clone(), device).require_grad()
}

/// Asserts `got` (any backend) is within 1e-5 of `want` relative to want's largest magnitude
/// (at least 1); returns that relative difference.
fn check<B: Backend, const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<Flex, D>) -> f32 {
    let got = Tensor::<Flex, D>::from_data(got.into_data(), &Default::default());
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let scale: f32 = want.clone().abs().max().into_scalar();
    let d = max_diff(got, want) / scale.max(1.0);
    assert!(d < 1e-5, "{what}: relative difference {d:.2e}");
    d
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use burn::backend::Wgpu;
    use burn::backend::wgpu::WgpuDevice;

    /// The wgpu device, or `None` after saying what to install (an error under IDC_REQUIRE_ALL).
    fn device() -> Option<WgpuDevice> {
        match trainer::device::wgpu::device() {
            Ok((d, name)) => {
                eprintln!("wgpu adapter: {name}");
                Some(d)
            }
            Err(e) => {
                datasets::testdata::skip(&format!(
                    "no wgpu device ({e:#}); for the CPU's Vulkan device: apt-get install mesa-vulkan-drivers libvulkan1"
                ));
                None
            }
        }
    }

    #[test]
    fn wgpu_kernels_match_burns() {
        if let Some(d) = device() {
            kernels_match_burns::<Autodiff<Wgpu>>(d);
        }
    }

    #[test]
    fn wgpu_batch_norm_kernels_match_burns() {
        if let Some(d) = device() {
            batch_norm_kernels_match_burns::<Autodiff<Wgpu>>(d);
        }
    }

    #[test]
    fn wgpu_empty_shapes_give_empty_results() {
        if let Some(d) = device() {
            empty_shapes_give_empty_results::<Autodiff<Wgpu>>(d, true);
        }
    }

    #[test]
    fn wgpu_steps_match_the_cpu() {
        if let Some(d) = device() {
            steps_match_flex::<Autodiff<Wgpu>>(d);
        }
    }

    #[test]
    fn wgpu_whole_run_exports_and_evaluates() {
        if let Some(d) = device() {
            whole_run_exports_and_evaluates::<Wgpu>("wgpu", d);
        }
    }

    #[test]
    fn wgpu_run_resumes_on_the_cpu_and_back() {
        if device().is_some() {
            // Measured on lavapipe: 7e-7 apart on one machine, 1.2e-5 on another (its LLVM
            // vectorizes the kernels' sums differently); 1e-4 as for CUDA.
            resume_across_devices("wgpu", 1e-4);
        }
    }
}

/// The same suite on CUDA: where the trainer is built with `--features cuda` and a GPU is there.
mod cuda {
    #[allow(unused_imports)]
    use super::*;

    /// The CUDA device, or `None` where there is none. Then the error must say what is missing
    /// (never a panic's leftovers such as `RecvError`), and `trainer --device cuda` must exit
    /// with it; under IDC_REQUIRE_CUDA (bench/gpu.sh, on a GPU machine) a missing device fails
    /// the test instead. CI has no GPU: there these tests check the error and say SKIPPED.
    #[cfg(feature = "cuda")]
    fn device() -> Option<burn::backend::cuda::CudaDevice> {
        let e = match trainer::device::cuda::device() {
            Ok((d, name)) => {
                eprintln!("CUDA: {name}");
                return Some(d);
            }
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("CUDA cannot be used here: ")
                && !e.contains("RecvError")
                && !e.contains("unwrap"),
            "unclear error: {e}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("c.yaml");
        std::fs::write(&config, "data:\n  root: /nonexistent\ndevice: cuda\n").unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_trainer"))
            .args(["--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && stderr.contains(&e),
            "trainer --device cuda: {stderr}"
        );
        if std::env::var_os("IDC_REQUIRE_CUDA").is_some() {
            panic!("IDC_REQUIRE_CUDA is set, and {e}");
        }
        datasets::testdata::not_on_this_machine(&format!("no CUDA device here ({e})"));
        None
    }

    #[cfg(not(feature = "cuda"))]
    fn device() -> Option<()> {
        datasets::testdata::skip(
            "this test build has no CUDA (cargo test -p trainer --features cuda --test gpu)",
        );
        None
    }

    #[test]
    fn cuda_kernels_match_burns() {
        #[cfg(feature = "cuda")]
        if let Some(d) = device() {
            kernels_match_burns::<Autodiff<burn::backend::Cuda>>(d);
        }
        #[cfg(not(feature = "cuda"))]
        device();
    }

    #[test]
    fn cuda_batch_norm_kernels_match_burns() {
        #[cfg(feature = "cuda")]
        if let Some(d) = device() {
            batch_norm_kernels_match_burns::<Autodiff<burn::backend::Cuda>>(d);
        }
        #[cfg(not(feature = "cuda"))]
        device();
    }

    #[test]
    fn cuda_empty_shapes_give_empty_results() {
        #[cfg(feature = "cuda")]
        if let Some(d) = device() {
            // burn's backward seeds an output of no values with a launch CUDA refuses (empty.rs).
            empty_shapes_give_empty_results::<Autodiff<burn::backend::Cuda>>(d, false);
        }
        #[cfg(not(feature = "cuda"))]
        device();
    }

    #[test]
    fn cuda_steps_match_the_cpu() {
        #[cfg(feature = "cuda")]
        if let Some(d) = device() {
            steps_match_flex::<Autodiff<burn::backend::Cuda>>(d);
        }
        #[cfg(not(feature = "cuda"))]
        device();
    }

    #[test]
    fn cuda_whole_run_exports_and_evaluates() {
        #[cfg(feature = "cuda")]
        if let Some(d) = device() {
            whole_run_exports_and_evaluates::<burn::backend::Cuda>("cuda", d);
        }
        #[cfg(not(feature = "cuda"))]
        device();
    }

    #[test]
    fn cuda_run_resumes_on_the_cpu_and_back() {
        if device().is_some() {
            // Unmeasured on a GPU yet: the cross-backend tolerance of the other CUDA tests.
            resume_across_devices("cuda", 1e-4);
        }
    }
}
