//! Where the engine's tensors live and its ops run: the one place that knows about devices.
//!
//! `Device::Cpu` is always there. `Device::Cuda` holds a handle from the `cuda` module, which
//! is the real cudarc-backed module when the `cuda` cargo feature is on and an uninhabited stub
//! when it is off, so code above this file never writes `cfg(feature = "cuda")`. Opening a
//! CUDA device creates its context and loads the kernels; the CUDA model, decoder and ops live
//! in `crate::cuda` (feature `cuda`).

use crate::model::{Llama, ModelError};
use crate::optim::{AdamW, LmMicroBatch, StepReport};

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

/// A language-model trainer on a device. On the CPU each step is the engine's
/// [`crate::optim::lm_train_step_sharded`] on the given model and optimiser. On a GPU the model
/// and AdamW live on the device between steps (bf16 weights and activations, f32 master
/// weights, moments and accumulation; `crate::cuda::model::lm_train_step`), and the CPU model
/// and optimiser passed to [`LmTrainer::step`] are stale until [`LmTrainer::sync`] copies the
/// device state back (for checkpoints, and at the end). GPU and CPU results agree within bf16
/// rounding, not bitwise; each is deterministic.
pub struct LmTrainer {
    inner: TrainerInner,
}

enum TrainerInner {
    Cpu,
    Cuda(Box<cuda::CudaTrainer>),
}

impl LmTrainer {
    /// A trainer for `model` and `opt` (their current state is the starting point).
    pub fn new(device: &Device, model: &Llama, opt: &AdamW) -> Result<LmTrainer, ModelError> {
        let inner = match device {
            Device::Cpu => TrainerInner::Cpu,
            Device::Cuda(d) => TrainerInner::Cuda(Box::new(cuda::CudaTrainer::new(d, model, opt)?)),
        };
        Ok(LmTrainer { inner })
    }

    /// `cpu` or `cuda:N`.
    pub fn device_name(&self) -> String {
        match &self.inner {
            TrainerInner::Cpu => "cpu".into(),
            TrainerInner::Cuda(t) => format!("cuda:{}", t.ordinal()),
        }
    }

    /// One optimiser step over the micro-batches (`shards` splits each micro-batch's rows on
    /// the CPU; the GPU runs each micro-batch whole).
    #[allow(clippy::too_many_arguments)]
    pub fn step(&mut self, model: &mut Llama, opt: &mut AdamW, micro: &[LmMicroBatch], lr: f32, clip: Option<f32>, shards: usize) -> Result<StepReport, ModelError> {
        match &mut self.inner {
            TrainerInner::Cpu => crate::optim::lm_train_step_sharded(model, opt, micro, lr, clip, shards),
            TrainerInner::Cuda(t) => t.step(micro, lr, clip),
        }
    }

    /// Brings `model` and `opt` up to date with the device's state (nothing to do on the CPU).
    pub fn sync(&self, model: &mut Llama, opt: &mut AdamW) -> Result<(), ModelError> {
        match &self.inner {
            TrainerInner::Cpu => Ok(()),
            TrainerInner::Cuda(t) => t.sync(model, opt),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The real CUDA handle: probes the driver without panicking (cudarc's
    //! `CudaContext::new` panics when libcuda is missing, so we check first).
    use super::{AdamW, DeviceError, Llama, LmMicroBatch, ModelError, StepReport};
    use crate::cuda::model::{GpuAdamW, GpuLlama};

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

    fn model_err(e: crate::cuda::CudaError) -> ModelError {
        match e {
            crate::cuda::CudaError::Model(m) => m,
            other => ModelError::Invalid { op: "CUDA training", message: other.to_string() },
        }
    }

    /// The CUDA side of [`super::LmTrainer`].
    pub struct CudaTrainer {
        model: GpuLlama,
        opt: GpuAdamW,
    }

    impl CudaTrainer {
        pub fn new(dev: &CudaDevice, model: &Llama, opt: &AdamW) -> Result<CudaTrainer, ModelError> {
            let gm = GpuLlama::from_cpu(dev.gpu.clone(), model).map_err(model_err)?;
            let mut go = GpuAdamW::new(opt.config.clone(), &gm).map_err(model_err)?;
            go.upload_state(&gm, opt).map_err(model_err)?;
            Ok(CudaTrainer { model: gm, opt: go })
        }

        pub fn ordinal(&self) -> usize {
            self.model.gpu().ordinal()
        }

        pub fn step(&mut self, micro: &[LmMicroBatch], lr: f32, clip: Option<f32>) -> Result<StepReport, ModelError> {
            crate::cuda::model::lm_train_step(&mut self.model, &mut self.opt, micro, lr, clip).map_err(model_err)
        }

        pub fn sync(&self, model: &mut Llama, opt: &mut AdamW) -> Result<(), ModelError> {
            self.model.download_into(model).map_err(model_err)?;
            self.opt.download_state(&self.model, opt).map_err(model_err)
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    //! The stub used when the `cuda` feature is off: the type has no values, so a
    //! `Device::Cuda` can never be built and matches on it cost nothing.
    use super::{AdamW, DeviceError, Llama, LmMicroBatch, ModelError, StepReport};

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

    /// No values without the feature, like [`CudaDevice`].
    pub enum CudaTrainer {}

    impl CudaTrainer {
        pub fn new(dev: &CudaDevice, _: &Llama, _: &AdamW) -> Result<CudaTrainer, ModelError> {
            match *dev {}
        }

        pub fn ordinal(&self) -> usize {
            match *self {}
        }

        pub fn step(&mut self, _: &[LmMicroBatch], _: f32, _: Option<f32>) -> Result<StepReport, ModelError> {
            match *self {}
        }

        pub fn sync(&self, _: &mut Llama, _: &mut AdamW) -> Result<(), ModelError> {
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

    #[test]
    fn the_cpu_trainer_is_the_engine_step() {
        use crate::config::{Head, LlamaConfig};
        use crate::optim::AdamWConfig;
        let config = LlamaConfig {
            vocab_size: 40, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 1, num_attention_heads: 2,
            num_key_value_heads: 1, head_dim: 8, rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 32,
            tie_word_embeddings: false, bos_token_id: None, eos_token_ids: vec![], pad_token_id: None, head: Head::LanguageModel,
        };
        let start = Llama::new_random(config, 3);
        let rows = vec![vec![1u32, 5, 7, 9, 2], vec![3u32, 4, 8]];
        let targets: Vec<Vec<i32>> = rows.iter().map(|r| r[1..].iter().map(|&t| t as i32).chain([-100]).collect()).collect();
        let micro = crate::optim::mean_ce_micro_batches(&rows, &targets, 1);
        let (mut a, mut b) = (start.clone(), start.clone());
        let (mut oa, mut ob) = (AdamW::new(AdamWConfig::llama2(0.1), &a), AdamW::new(AdamWConfig::llama2(0.1), &b));
        let mut t = LmTrainer::new(&Device::Cpu, &a, &oa).unwrap();
        assert_eq!(t.device_name(), "cpu");
        for _ in 0..3 {
            let ra = t.step(&mut a, &mut oa, &micro, 1e-2, Some(1.0), 2).unwrap();
            let rb = crate::optim::lm_train_step_sharded(&mut b, &mut ob, &micro, 1e-2, Some(1.0), 2).unwrap();
            assert_eq!(ra, rb);
        }
        t.sync(&mut a, &mut oa).unwrap();
        assert_eq!(a.params(), b.params());
        assert_eq!(oa.moments(), ob.moments());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_an_error_not_a_panic() {
        assert!(matches!(Device::parse("cuda:0"), Err(DeviceError::NotCompiled { ordinal: 0 })));
    }
}
