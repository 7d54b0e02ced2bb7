//! Where the engine's tensors live and its ops run: the one place that knows about devices.
//!
//! `Device::Cpu` is always there. `Device::Cuda` holds a handle from the `cuda` module, which
//! is the real cudarc-backed module when the `cuda` cargo feature is on and an uninhabited stub
//! when it is off, so code above this file never writes `cfg(feature = "cuda")`. Opening a
//! CUDA device creates its context and loads the kernels; the CUDA model, decoder and ops live
//! in `crate::cuda` (feature `cuda`).

/// Errors opening a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cuda device {ordinal}: this build has no CUDA support (rebuild with `--features cuda`)")]
    NotCompiled { ordinal: usize },
    #[error("cuda device {ordinal}: {message}")]
    Unavailable { ordinal: usize, message: String },
    #[error("unknown device `{spec}` (expected `cpu`, `cuda` or `cuda:N`)")]
    BadSpec { spec: String },
}

/// A compute device.
#[derive(Debug, Clone)]
pub enum Device {
    Cpu,
    Cuda(cuda::CudaDevice),
}

impl Device {
    /// Parses `cpu`, `cuda` (ordinal 0) or `cuda:N` and opens the device.
    pub fn parse(spec: &str) -> Result<Device, DeviceError> {
        let bad = || DeviceError::BadSpec { spec: spec.to_string() };
        match spec {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Device::cuda(0),
            s => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                Device::cuda(n.parse().map_err(|_| bad())?)
            }
        }
    }

    /// Opens CUDA device `ordinal`; an error (never a panic) without a GPU or CUDA support.
    pub fn cuda(ordinal: usize) -> Result<Device, DeviceError> {
        cuda::CudaDevice::open(ordinal).map(Device::Cuda)
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// A short name for logs and benchmark reports: `cpu` or `cuda:N`.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu".to_string(),
            Device::Cuda(d) => format!("cuda:{}", d.ordinal()),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The real CUDA handle: probes the driver without panicking (cudarc's
    //! `CudaContext::new` panics when libcuda is missing, so we check first).
    use super::DeviceError;

    #[derive(Debug, Clone)]
    pub struct CudaDevice {
        gpu: std::sync::Arc<crate::cuda::Gpu>,
    }

    impl CudaDevice {
        /// Opens the device: probes the libraries (no panic without them), creates the
        /// context and loads the kernels (compiled by NVRTC once, then cached).
        pub fn open(ordinal: usize) -> Result<CudaDevice, DeviceError> {
            crate::cuda::Gpu::open(ordinal)
                .map(|gpu| CudaDevice { gpu })
                .map_err(|e| DeviceError::Unavailable { ordinal, message: e.to_string() })
        }

        pub fn ordinal(&self) -> usize {
            self.gpu.ordinal()
        }

        /// The device handle the CUDA model and kernels run on.
        pub fn gpu(&self) -> &std::sync::Arc<crate::cuda::Gpu> {
            &self.gpu
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    //! The stub used when the `cuda` feature is off: the type has no values, so a
    //! `Device::Cuda` can never be built and matches on it cost nothing.
    use super::DeviceError;

    #[derive(Debug, Clone)]
    pub enum CudaDevice {}

    impl CudaDevice {
        pub fn open(ordinal: usize) -> Result<CudaDevice, DeviceError> {
            Err(DeviceError::NotCompiled { ordinal })
        }

        pub fn ordinal(&self) -> usize {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_bad_specs_are_errors() {
        assert!(Device::parse("cpu").unwrap().is_cpu());
        assert!(matches!(Device::parse("tpu"), Err(DeviceError::BadSpec { .. })));
        assert!(matches!(Device::parse("cuda:x"), Err(DeviceError::BadSpec { .. })));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error_not_a_panic() {
        assert!(matches!(Device::parse("cuda:0"), Err(DeviceError::NotCompiled { ordinal: 0 })));
    }
}
