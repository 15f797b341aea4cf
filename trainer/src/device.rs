//! The one place that turns `device: cpu | cuda | wgpu` into a burn backend and device, or into
//! an error naming what is missing. Everything after it is generic over the backend: the CPU,
//! CUDA and wgpu runs share every line of the training path.
//!
//! - `cpu`: burn's `flex` backend (with the project's fused CPU kernels).
//! - `cuda`: burn's CUDA backend (cubecl; libcuda and NVRTC loaded at run time, the kernels
//!   compiled against the CUDA headers), with `--features cuda`.
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
#[cfg(not(all(feature = "cuda", feature = "wgpu")))]
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
        let cannot = |why: String| {
            anyhow!(
                "device: cuda was asked for but CUDA cannot be used here: {why}; or use --device cpu"
            )
        };
        let (name, gpus) = probe().map_err(cannot)?;
        let device = CudaDevice::default();
        models::catch_quietly(|| {
            burn::tensor::Tensor::<Cuda, 1>::zeros([1], &device).into_data();
        })
        .map_err(|why| cannot(format!("burn's CUDA backend failed to start ({why})")))?;
        Ok((device, format!("{name} (CUDA device 0 of {gpus})")))
    }

    /// The libraries NVRTC is loaded from (burn's CUDA backend compiles its kernels with it at run
    /// time), as cudarc looks for them.
    const NVRTC: [&str; 3] = ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"];

    /// The first GPU's name and how many the NVIDIA driver sees, or what is missing: the driver,
    /// a GPU, NVRTC, the CUDA headers.
    /// burn's backend panics on a missing part, on a thread of its own, and the panic reaches
    /// the caller as a bare `RecvError`: each part is asked for here first.
    fn probe() -> std::result::Result<(String, i32), String> {
        // SAFETY: loading the driver and NVRTC runs their initialisers, as burn's loading does;
        // cuInit and cuDeviceGetCount are called with the C signatures of the CUDA driver API.
        unsafe {
            let driver = ["libcuda.so.1", "libcuda.so"]
                .iter()
                .find_map(|name| libloading::Library::new(*name).ok())
                .ok_or(
                    "no NVIDIA driver (libcuda.so.1 cannot be loaded): install the NVIDIA driver; \
                     `nvidia-smi` lists the GPUs it sees",
                )?;
            let init = driver
                .get::<unsafe extern "C" fn(u32) -> i32>(b"cuInit")
                .map_err(|e| format!("libcuda.so.1 has no cuInit ({e})"))?;
            const NO_DEVICE: i32 = 100;
            match init(0) {
                0 => {}
                NO_DEVICE => return Err("the NVIDIA driver is there but sees no GPU".into()),
                code => {
                    return Err(format!(
                        "the NVIDIA driver failed to start (cuInit: CUDA error {code}; \
                         `nvidia-smi` says why, often a driver and kernel module of different versions)"
                    ));
                }
            }
            let count = driver
                .get::<unsafe extern "C" fn(*mut i32) -> i32>(b"cuDeviceGetCount")
                .map_err(|e| format!("libcuda.so.1 has no cuDeviceGetCount ({e})"))?;
            let mut gpus = 0;
            if count(&mut gpus) != 0 || gpus < 1 {
                return Err("the NVIDIA driver is there but sees no GPU".into());
            }
            let mut name = [0u8; 256];
            let mut first = 0i32;
            let named = driver
                .get::<unsafe extern "C" fn(*mut i32, i32) -> i32>(b"cuDeviceGet")
                .is_ok_and(|get| get(&mut first, 0) == 0)
                && driver
                    .get::<unsafe extern "C" fn(*mut u8, i32, i32) -> i32>(b"cuDeviceGetName")
                    .is_ok_and(|get_name| get_name(name.as_mut_ptr(), 256, first) == 0);
            let name = match named {
                true => std::ffi::CStr::from_bytes_until_nul(&name)
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "a GPU".into()),
                false => "a GPU".into(),
            };
            if !NVRTC
                .iter()
                .any(|name| libloading::Library::new(*name).is_ok())
            {
                return Err(format!(
                    "NVRTC, which burn's CUDA backend compiles its kernels with, cannot be loaded \
                     (looked for {}): install the CUDA toolkit's NVRTC (NVIDIA's `cuda-nvrtc-13-0` \
                     package, or `pip install nvidia-cuda-nvrtc`) and put its lib folder on \
                     LD_LIBRARY_PATH (e.g. /usr/local/cuda/lib64)",
                    NVRTC.join(", ")
                ));
            }
            headers()?;
            Ok((name, gpus))
        }
    }

    /// The header every kernel burn's CUDA backend compiles includes, and the one it includes in
    /// turn (from another package when installed from wheels), where the backend looks for them
    /// (cubecl's lookup: CUDA_PATH, else /usr/local/cuda, /opt/cuda, /usr); without them the
    /// backend panics at its first kernel.
    fn headers() -> std::result::Result<(), String> {
        let looked = match cubecl::cuda::install::cuda_path() {
            None => "no CUDA_PATH, /usr/local/cuda, /opt/cuda or /usr/bin/nvcc".to_string(),
            Some(root) => match ["cuda_runtime.h", "crt/host_config.h"]
                .iter()
                .map(|h| root.join("include").join(h))
                .find(|h| !h.is_file())
            {
                None => return Ok(()),
                Some(h) => format!("{} is not there", h.display()),
            },
        };
        Err(format!(
            "burn's CUDA backend compiles its kernels against the CUDA headers, and {looked}: \
             install the CUDA toolkit's headers (NVIDIA's `cuda-cudart-dev-13-0` package, or `pip \
             install nvidia-cuda-runtime nvidia-cuda-crt`) and set CUDA_PATH to the folder whose \
             include/ holds them (/usr/local/cuda by default)"
        ))
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
