//! The CUDA backend (cargo feature `cuda`): our own kernels compiled at run time by NVRTC,
//! matrix products through cuBLAS, bf16 weights and activations with f32 master weights and
//! f32 accumulation.
//!
//! * [`Gpu`] is one device: its context and stream, a cuBLAS handle and the kernel module.
//!   The kernel sources (`kernels/cuda/*.cu`, embedded in the binary) are compiled to a CUBIN
//!   for the device's architecture once and cached on disk (see [`cache_dir`]), so later runs
//!   load them in milliseconds. A CUBIN, unlike PTX, does not depend on the driver's PTX JIT.
//! * [`ops`] launches each kernel on raw device pointers with explicit shapes; the parity tests
//!   (`kernels/tests/cuda_parity.rs`) check every one against the CPU reference.
//! * [`model::GpuLlama`] is the Llama model on the device: forward, backward, fused AdamW with
//!   global-norm clipping; [`decode::GpuDecoder`] is batched KV-cache generation.
//!
//! cudarc loads libcuda, libnvrtc and libcublas with `dlopen` at first use, so this builds on
//! machines without CUDA; [`probe`] checks them without panicking (cudarc's `CudaContext::new`
//! panics when libcuda is missing).

pub mod bench;
pub mod decode;
pub mod model;
pub mod ops;

use crate::model::ModelError;
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Errors from the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("{0}")]
    Unavailable(String),
    #[error("CUDA driver error in {op}: {message}")]
    Driver { op: String, message: String },
    #[error("NVRTC could not compile the kernels for {arch}:\n{log}")]
    Compile { arch: String, log: String },
    #[error("cuBLAS error in {op}: {message}")]
    Blas { op: String, message: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

pub(crate) fn drv<E: std::fmt::Debug>(op: &str) -> impl FnOnce(E) -> CudaError + '_ {
    move |e| CudaError::Driver { op: op.to_string(), message: format!("{e:?}") }
}

/// Why CUDA device `ordinal` cannot be used, or `Ok` when it can. Never panics.
pub fn probe(ordinal: usize) -> Result<(), String> {
    // SAFETY: these only try to load the shared libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the CUDA driver library (libcuda.so.1) is not present: no NVIDIA driver on this machine".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("NVRTC (libnvrtc.so.13) is not present: install the CUDA 13 toolkit or `pip install nvidia-cuda-nvrtc==13.0.*` and put its lib folder on LD_LIBRARY_PATH".into());
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err("cuBLAS (libcublas.so.13) is not present: install the CUDA 13 toolkit or `pip install nvidia-cublas==13.0.*` and put its lib folder on LD_LIBRARY_PATH".into());
    }
    let count = CudaContext::device_count().map_err(|e| format!("cuDeviceGetCount failed: {e:?}"))?;
    if ordinal >= count.max(0) as usize {
        return Err(format!("CUDA device {ordinal} requested, {count} present"));
    }
    Ok(())
}

/// The kernel sources, in compilation order (the common header first).
pub fn kernel_sources() -> [(&'static str, &'static str); 7] {
    [
        ("common.cuh", include_str!("../../cuda/common.cuh")),
        ("elementwise.cu", include_str!("../../cuda/elementwise.cu")),
        ("loss.cu", include_str!("../../cuda/loss.cu")),
        ("optim.cu", include_str!("../../cuda/optim.cu")),
        ("attention.cu", include_str!("../../cuda/attention.cu")),
        ("attention_fa2.cu", include_str!("../../cuda/attention_fa2.cu")),
        ("decode.cu", include_str!("../../cuda/decode.cu")),
    ]
}

/// All kernels as one translation unit.
pub fn kernel_source() -> String {
    let mut s = String::new();
    for (name, text) in kernel_sources() {
        s.push_str(&format!("// ---- {name}\n"));
        s.push_str(text);
        s.push('\n');
    }
    s
}

const NVRTC_OPTIONS: [&str; 2] = ["-std=c++17", "--dopt=on"];

/// Where compiled kernels are cached: `$ALIGNFLOW_CUDA_CACHE`, else
/// `$XDG_CACHE_HOME/alignflow/cuda`, else `~/.cache/alignflow/cuda`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ALIGNFLOW_CUDA_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(p).join("alignflow/cuda"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/alignflow/cuda"))
}

fn nvrtc_version() -> String {
    let (mut a, mut b) = (0i32, 0i32);
    // SAFETY: writes two ints.
    let _ = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
    format!("{a}.{b}")
}

/// Compiles the kernels to a CUBIN for `arch` (e.g. `sm_90`) with NVRTC, uncached. Needs only
/// libnvrtc, not a GPU: the CPU-side test compiles every kernel this way.
pub fn compile_cubin(arch: &str) -> Result<Vec<u8>, CudaError> {
    use cudarc::nvrtc::{result, sys};
    let src = std::ffi::CString::new(kernel_source()).map_err(|e| CudaError::Compile { arch: arch.into(), log: e.to_string() })?;
    let name = std::ffi::CString::new("alignflow_kernels.cu").unwrap_or_default();
    let prog = result::create_program(&src, Some(&name)).map_err(|e| CudaError::Compile { arch: arch.into(), log: format!("{e:?}") })?;
    let mut opts: Vec<String> = NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect();
    opts.push(format!("--gpu-architecture={arch}"));
    // SAFETY: prog is a valid program handle until destroyed below.
    unsafe {
        let compiled = result::compile_program(prog, &opts);
        if compiled.is_err() {
            let log = result::get_program_log(prog).map(|l| l.iter().map(|&c| c as u8 as char).collect::<String>()).unwrap_or_default();
            let _ = result::destroy_program(prog);
            return Err(CudaError::Compile { arch: arch.into(), log: log.trim_end_matches('\0').to_string() });
        }
        let mut n = 0usize;
        sys::nvrtcGetCUBINSize(prog, &mut n).result().map_err(|e| CudaError::Compile { arch: arch.into(), log: format!("{e:?}") })?;
        let mut buf = vec![0u8; n];
        sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _).result().map_err(|e| CudaError::Compile { arch: arch.into(), log: format!("{e:?}") })?;
        let _ = result::destroy_program(prog);
        Ok(buf)
    }
}

/// [`compile_cubin`] through the on-disk cache, keyed by the sources, options, architecture
/// and NVRTC version. Returns the CUBIN and whether it came from the cache.
pub fn cached_cubin(arch: &str) -> Result<(Vec<u8>, bool), CudaError> {
    let mut h = blake3::Hasher::new();
    h.update(kernel_source().as_bytes());
    h.update(NVRTC_OPTIONS.join(" ").as_bytes());
    h.update(arch.as_bytes());
    h.update(nvrtc_version().as_bytes());
    let key = h.finalize().to_hex();
    let path = cache_dir().map(|d| d.join(format!("{arch}-{}.cubin", &key[..32])));
    if let Some(p) = &path
        && let Ok(bytes) = std::fs::read(p)
        && bytes.starts_with(b"\x7fELF")
    {
        return Ok((bytes, true));
    }
    let cubin = compile_cubin(arch)?;
    if let Some(p) = &path {
        // Best effort: a read-only home only costs a recompile next time.
        if let Some(dir) = p.parent()
            && std::fs::create_dir_all(dir).is_ok()
        {
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, &cubin).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
    }
    Ok((cubin, false))
}

/// One CUDA device with its stream, cuBLAS handle and compiled kernels.
pub struct Gpu {
    ordinal: usize,
    name: String,
    arch: String,
    sm_count: u32,
    ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// The workspace cuBLAS was given (kept alive with the handle).
    #[allow(dead_code)]
    blas_workspace: Option<CudaSlice<u8>>,
    module: Arc<CudaModule>,
    funcs: Mutex<HashMap<&'static str, CudaFunction>>,
    /// Seconds spent compiling (0 when the cache had the kernels).
    pub compile_seconds: f64,
    /// Per-op wall time while profiling is on ([`Gpu::set_profiling`]): every op is then
    /// followed by a synchronisation, so the numbers add up to a (slightly slower) step.
    profiling: std::sync::atomic::AtomicBool,
    profile: Mutex<HashMap<&'static str, (f64, u64)>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu(cuda:{} {} {})", self.ordinal, self.name, self.arch)
    }
}

impl Gpu {
    /// Opens device `ordinal`: probes the libraries, creates the context, compiles (or loads
    /// from the cache) the kernels. An error, never a panic, without a usable GPU.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>, CudaError> {
        probe(ordinal).map_err(CudaError::Unavailable)?;
        let ctx = CudaContext::new(ordinal).map_err(drv("cuCtxCreate"))?;
        // One stream: the automatic cross-stream event tracking is not needed.
        // SAFETY: nothing else uses this context's events yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        // Keep freed memory in the stream-ordered pool instead of returning it to the driver
        // at every synchronisation: training steps free and re-allocate the same sizes.
        // SAFETY: the device handle comes from the live context; the value outlives the call.
        unsafe {
            if let Ok(pool) = cudarc::driver::result::device::get_default_mem_pool(ctx.cu_device()) {
                let mut threshold = u64::MAX;
                let _ = cudarc::driver::result::mem_pool::set_attribute(
                    pool,
                    cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    &mut threshold as *mut u64 as *mut std::ffi::c_void,
                );
            }
        }
        let (major, minor) = ctx.compute_capability().map_err(drv("compute capability"))?;
        if major < 8 {
            return Err(CudaError::Unavailable(format!("compute capability {major}.{minor}: the bf16 tensor-core kernels need 8.0 (Ampere) or newer")));
        }
        let arch = format!("sm_{major}{minor}");
        let name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("device attribute"))? as u32;
        let t0 = std::time::Instant::now();
        let (cubin, cached) = cached_cubin(&arch)?;
        let compile_seconds = if cached { 0.0 } else { t0.elapsed().as_secs_f64() };
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin)).map_err(drv("cuModuleLoadData"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| CudaError::Blas { op: "cublasCreate".into(), message: format!("{e:?}") })?;
        // An explicit cuBLAS workspace (NVIDIA recommends 32 MiB on Hopper); some of the faster
        // product algorithms need one. `ALIGNFLOW_CUBLAS_WORKSPACE_MB=0` leaves cuBLAS's default.
        let ws_mb = std::env::var("ALIGNFLOW_CUBLAS_WORKSPACE_MB").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(32);
        let blas_workspace = if ws_mb > 0 {
            let ws = stream.alloc_zeros::<u8>(ws_mb << 20).map_err(drv("cuMemAlloc"))?;
            // SAFETY: the workspace lives as long as the handle (both are fields of Gpu).
            unsafe { cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), dptr(&ws) as *mut _, ws_mb << 20) }
                .result()
                .map_err(|e| CudaError::Blas { op: "cublasSetWorkspace".into(), message: format!("{e:?}") })?;
            Some(ws)
        } else {
            None
        };
        Ok(Arc::new(Gpu {
            blas_workspace,
            ordinal,
            name,
            arch,
            sm_count,
            ctx,
            stream,
            blas,
            module,
            funcs: Mutex::new(HashMap::new()),
            compile_seconds,
            profiling: false.into(),
            profile: Mutex::new(HashMap::new()),
        }))
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The architecture the kernels were built for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize), CudaError> {
        self.ctx.mem_get_info().map_err(drv("cuMemGetInfo"))
    }

    /// Waits for all queued work; reports any error a kernel raised.
    pub fn sync(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    /// Runs `f` (which queues device work) and, when profiling, waits for it and adds its time
    /// to the op `name`.
    pub(crate) fn timed<T>(&self, name: &'static str, f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
        if !self.profiling.load(std::sync::atomic::Ordering::Relaxed) {
            return f();
        }
        self.sync()?;
        let t0 = std::time::Instant::now();
        let r = f()?;
        self.sync()?;
        let dt = t0.elapsed().as_secs_f64();
        let mut m = self.profile.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(name).or_insert((0.0, 0));
        e.0 += dt;
        e.1 += 1;
        Ok(r)
    }

    /// Turns the per-op profile on or off (off by default: profiling synchronises every op).
    pub fn set_profiling(&self, on: bool) {
        self.profiling.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The profile so far (op, seconds, calls), longest first; `reset` clears it.
    pub fn profile(&self, reset: bool) -> Vec<(&'static str, f64, u64)> {
        let mut m = self.profile.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, (s, n))| (*k, *s, *n)).collect();
        if reset {
            m.clear();
        }
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    pub(crate) fn func(&self, name: &'static str) -> Result<CudaFunction, CudaError> {
        let mut funcs = self.funcs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = funcs.get(name) {
            return Ok(f.clone());
        }
        let f = self.module.load_function(name).map_err(drv(name))?;
        // Kernels with large tiles ask for more than the default 48 KB of shared memory.
        let _ = f.set_attribute(cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 160 * 1024);
        funcs.insert(name, f.clone());
        Ok(f)
    }

    /// A zero-filled device buffer of `n` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>, CudaError> {
        self.timed("alloc+memset", || self.stream.alloc_zeros::<T>(n.max(1)).map_err(drv("cuMemAlloc")))
    }

    /// A device buffer of `n` elements with undefined contents, for outputs that the next op
    /// writes in full (saves the zero fill of [`Gpu::zeros`]).
    pub fn empty<T: DeviceRepr>(&self, n: usize) -> Result<CudaSlice<T>, CudaError> {
        // SAFETY: the memory is only read after a kernel has written it (callers' contract).
        self.timed("alloc", || unsafe { self.stream.alloc::<T>(n.max(1)) }.map_err(drv("cuMemAlloc")))
    }

    /// A device copy of a host slice.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, CudaError> {
        if host.is_empty() {
            return unsafe { self.stream.alloc::<T>(1) }.map_err(drv("cuMemAlloc"));
        }
        self.stream.clone_htod(host).map_err(drv("cuMemcpyHtoD"))
    }

    /// A host copy of a device buffer (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        self.stream.clone_dtoh(dev).map_err(drv("cuMemcpyDtoH"))
    }

    /// Copies `n` elements between device addresses.
    pub fn copy<T>(&self, dst: u64, src: u64, n: usize) -> Result<(), CudaError> {
        let bytes = n * std::mem::size_of::<T>();
        // SAFETY: callers pass live device allocations of at least n elements.
        self.timed("copy", || unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }.map_err(drv("cuMemcpyDtoD")))
    }

    /// Fills `n` elements at a device address with zero bytes.
    pub fn memset_zero<T>(&self, dst: u64, n: usize) -> Result<(), CudaError> {
        let bytes = n * std::mem::size_of::<T>();
        // SAFETY: as for copy.
        self.timed("memset", || unsafe { cudarc::driver::result::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }.map_err(drv("cuMemsetD8")))
    }

    /// Row-major `C (m×n) = op(A) · op(B) + beta · C` with bf16 A and B (op = transpose when
    /// the flag is set; A is stored (m×k), or (k×m) when transposed, B (k×n) or (n×k)), f32
    /// accumulation, and C in f32 or bf16. cuBLAS is column-major: a row-major C is a
    /// column-major Cᵀ = op(B)ᵀ op(A)ᵀ, so the operands swap.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(&self, c: u64, c_f32: bool, a: u64, ta: bool, b: u64, tb: bool, m: usize, n: usize, k: usize, beta: f32) -> Result<(), CudaError> {
        use cudarc::cublas::sys::{cublasOperation_t, cudaDataType_t};
        if m == 0 || n == 0 {
            return Ok(());
        }
        let op = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
        let lda = if ta { m } else { k };
        let ldb = if tb { k } else { n };
        let alpha = 1.0f32;
        let cty = if c_f32 { cudaDataType_t::CUDA_R_32F } else { cudaDataType_t::CUDA_R_16BF };
        self.timed("gemm", || self.gemm_raw(op(tb), op(ta), n, m, k, alpha, b, ldb, a, lda, beta, c, cty))
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_raw(
        &self,
        opa: cudarc::cublas::sys::cublasOperation_t,
        opb: cudarc::cublas::sys::cublasOperation_t,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        beta: f32,
        c: u64,
        cty: cudarc::cublas::sys::cudaDataType_t,
    ) -> Result<(), CudaError> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
        // SAFETY: callers pass device buffers of the stated shapes; the scalars live on the stack
        // for the duration of the (host-side synchronous) call.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                opa,
                opb,
                m as i32,
                n as i32,
                k as i32,
                &alpha as *const f32 as *const _,
                a as *const _,
                cudaDataType_t::CUDA_R_16BF,
                lda as i32,
                b as *const _,
                cudaDataType_t::CUDA_R_16BF,
                ldb as i32,
                &beta as *const f32 as *const _,
                c as *mut _,
                cty,
                m as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| CudaError::Blas { op: format!("gemm (column-major) {m}x{n}x{k}"), message: format!("{e:?}") })
    }

    /// A grid for grid-stride loops over `n` elements.
    pub(crate) fn grid_for(&self, n: usize) -> u32 {
        (n.div_ceil(256) as u32).clamp(1, self.sm_count * 16)
    }
}

/// The raw device address of a buffer (the kernels take plain pointers, so buffers can be
/// addressed at offsets: the model keeps all parameters in one flat buffer).
pub fn dptr<T>(s: &CudaSlice<T>) -> u64 {
    let (p, _guard) = s.device_ptr(s.stream());
    p
}

/// Launches a kernel by name with a launch config and arguments (each argument is evaluated
/// into a local that lives until the launch).
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        use cudarc::driver::PushKernelArg as _;
        let f = $gpu.func($name)?;
        $gpu.timed($name, || {
            let mut b = $gpu.stream.launch_builder(&f);
            $( let a = $arg; b.arg(&a); )*
            // SAFETY: the argument list matches the kernel's signature in kernels/cuda/.
            unsafe { b.launch($cfg) }.map_err($crate::cuda::drv($name))?;
            Ok(())
        })?;
    }};
}
pub(crate) use launch;

/// The reference (CPU) version of the `sample_rows` kernel's top-p rule, for tests: the same
/// arithmetic in the same order, so the two agree except where `exp` rounds differently.
pub fn sample_top_p_ref(logits: &[f32], uniform: f32, temperature: f32, top_p: f32) -> u32 {
    let v = logits.len();
    let mx = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / temperature;
    let p: Vec<f32> = logits.iter().map(|&l| ((l - mx) * inv_t).exp()).collect();
    let threads = 1024;
    let chunk = v.div_ceil(threads);
    let chunks: Vec<&[f32]> = (0..threads).map(|k| &p[(k * chunk).min(v)..((k + 1) * chunk).min(v)]).collect();
    let total: f32 = chunks.iter().map(|c| c.iter().sum::<f32>()).sum();
    let mut tau = 0.0f32;
    if top_p < 1.0 {
        let (mut lo, mut hi) = (0.0f32, 1.0f32);
        for _ in 0..32 {
            let mid = 0.5 * (lo + hi);
            let s: f32 = chunks.iter().map(|c| c.iter().filter(|&&x| x >= mid).sum::<f32>()).sum();
            if s >= top_p * total {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        tau = lo;
    }
    let nucleus: f32 = chunks.iter().map(|c| c.iter().filter(|&&x| x >= tau).sum::<f32>()).sum();
    let target = uniform * nucleus;
    let mut run = 0.0f32;
    for (j, &x) in p.iter().enumerate() {
        if x >= tau {
            run += x;
            if run > target {
                return j as u32;
            }
        }
    }
    (0..v).rev().find(|&j| p[j] >= tau).unwrap_or(0) as u32
}
