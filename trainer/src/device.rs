//! The one place that turns `device: cpu | cuda | wgpu` into a burn backend and device, or into
//! an error naming what is missing. Everything after it is generic over the backend: the CPU,
//! CUDA and wgpu runs share every line of the training path.
//!
//! - `cpu`: burn's `flex` backend (with the project's fused CPU kernels).
//! - `cuda`: burn's CUDA backend (cubecl; libcuda and NVRTC loaded at run time), with
//!   `--features cuda`.
//! - `wgpu`: burn's wgpu backend (cubecl's WGSL kernels through Vulkan, Metal or DX12), with
//!   `--features wgpu`. Any GPU with such a driver, or Mesa's lavapipe, a Vulkan device on the CPU
//!   (Debian: `mesa-vulkan-drivers`), on which CI runs the GPU code path.
//!
//! burn's GPU backends panic on first use when they cannot start; each is probed here first, so
//! asking for one is an error, never a crash or a silent CPU run.

use anyhow::Result;
#[allow(unused_imports)]
use anyhow::{anyhow, bail};

/// What to tell a user whose build lacks a device's feature.
fn not_built(device: &str, feature: &str) -> anyhow::Error {
    anyhow!(
        "device: {device} was asked for, but this trainer was built without {}: rebuild with \
         `cargo build --release --features {feature}` (or use --device cpu)",
        device.to_uppercase().replace("WGPU", "wgpu")
    )
}

#[cfg(feature = "cuda")]
pub mod cuda {
    use super::*;
    use burn::backend::Cuda;
    pub use burn::backend::cuda::CudaDevice;

    /// The default CUDA device and a description of it, or why CUDA cannot be used here.
    pub fn device() -> Result<(CudaDevice, String)> {
        let device = CudaDevice::default();
        models::catch_quietly(|| {
            burn::tensor::Tensor::<Cuda, 1>::zeros([1], &device).into_data();
        })
        .map_err(|why| {
            anyhow!(
                "device: cuda was asked for but CUDA cannot be used here ({why}); install the NVIDIA driver, or use --device cpu"
            )
        })?;
        Ok((device, "CUDA device 0".to_string()))
    }
}

#[cfg(not(feature = "cuda"))]
pub mod cuda {
    use super::*;

    pub fn device() -> Result<((), String)> {
        Err(not_built("cuda", "cuda"))
    }
}

#[cfg(feature = "wgpu")]
pub mod wgpu {
    use super::*;
    pub use burn::backend::wgpu::WgpuDevice;
    use burn::backend::wgpu::graphics::AutoGraphicsApi;
    use std::path::Path;

    /// The adapter wgpu picks (its best device; `CUBECL_WGPU_DEFAULT_DEVICE` overrides), named as
    /// the driver names it ("llvmpipe (LLVM 15.0.7, 256 bits)" for lavapipe), or an error naming
    /// the missing part: the Vulkan loader, a driver (ICD), or an adapter.
    pub fn device() -> Result<(WgpuDevice, String)> {
        // A device is set up once per process (cubecl refuses a second setup): keep the answer.
        static PROBED: std::sync::OnceLock<std::result::Result<String, String>> =
            std::sync::OnceLock::new();
        let device = WgpuDevice::DefaultDevice;
        let probed = PROBED.get_or_init(|| {
            let setup = models::catch_quietly(|| {
                burn::backend::wgpu::init_setup::<AutoGraphicsApi>(
                    &WgpuDevice::DefaultDevice,
                    Default::default(),
                )
            })
            .map_err(|why| {
                format!(
                    "device: wgpu cannot be used here: {}; details: {why}",
                    missing()
                )
            })?;
            let info = setup.adapter.get_info();
            let driver = match info.driver_info.as_str() {
                "" => String::new(),
                d => format!(", {d}"),
            };
            Ok(format!(
                "{} ({:?}, {:?}{driver})",
                info.name, info.backend, info.device_type
            ))
        });
        match probed {
            Ok(name) => Ok((device, name.clone())),
            Err(e) => Err(anyhow!("{e}")),
        }
    }

    /// Which part of a Vulkan stack is missing (on Linux; elsewhere wgpu uses Metal or DX12).
    fn missing() -> String {
        if !cfg!(target_os = "linux") {
            return "no adapter found (a GPU driver with Metal or DX12 is needed)".into();
        }
        // SAFETY: loading the Vulkan loader runs its initialisers, as wgpu's own loading does.
        let loader = unsafe { libloading::Library::new("libvulkan.so.1") };
        if loader.is_err() {
            return "no Vulkan loader (libvulkan.so.1): install it (Debian/Ubuntu: \
                    `apt-get install libvulkan1`)"
                .into();
        }
        let icd_dirs = [
            "/usr/share/vulkan/icd.d",
            "/etc/vulkan/icd.d",
            "/usr/local/share/vulkan/icd.d",
        ];
        let from_env = ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        let any_icd = icd_dirs.iter().any(|d| {
            std::fs::read_dir(Path::new(d)).is_ok_and(|mut e| {
                e.any(|f| f.is_ok_and(|f| f.path().extension().is_some_and(|x| x == "json")))
            })
        });
        if !any_icd && !from_env {
            return "the Vulkan loader is there but no Vulkan driver (ICD) is: install your GPU's \
                    driver, or Mesa's CPU device lavapipe (Debian/Ubuntu: `apt-get install \
                    mesa-vulkan-drivers`)"
                .into();
        }
        "the Vulkan loader and a driver (ICD) are there, but no adapter could be opened (see \
         `vulkaninfo --summary`; lavapipe: `apt-get install mesa-vulkan-drivers`)"
            .into()
    }
}

#[cfg(not(feature = "wgpu"))]
pub mod wgpu {
    use super::*;

    pub fn device() -> Result<((), String)> {
        Err(not_built("wgpu", "wgpu"))
    }
}
