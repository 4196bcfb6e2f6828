//! Mixed precision and memory layout: bf16 autocast and channels-last, through the C functions of
//! `shim.cpp` (tch 0.24 can only switch CUDA autocast on with float16, and has no memory-format
//! binding).
//!
//! The pattern is PyTorch's AMP recipe for bf16: forward and loss run under autocast (convolutions
//! and matmuls in bf16, reductions and the loss in float32), `backward` and the optimizer step run
//! outside it, and the weights and optimizer state stay float32. bf16 has float32's exponent range,
//! so no loss scaling is needed.

use std::ffi::c_int;
use tch::{Device, Tensor};
use torch_sys::C_tensor;
use trainq::domain::spec::Precision;

extern "C" {
    fn trainq_autocast_enter_bf16(cuda: c_int) -> c_int;
    fn trainq_autocast_exit(cuda: c_int, previous: c_int) -> c_int;
    fn trainq_channels_last(tensor: *const C_tensor) -> *mut C_tensor;
    fn trainq_set_channels_last(tensor: *mut C_tensor) -> c_int;
    fn trainq_is_channels_last(tensor: *const C_tensor) -> c_int;
}

/// The bf16 arithmetic a CPU offers, from its feature flags. oneDNN runs bf16 convolutions and
/// matmuls on AMX tiles or AVX512-BF16 dot products; without either it converts to float32 and
/// back, which measured 0.6× as fast as float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuBf16 {
    /// AMX-BF16 tile matrix units (Intel Sapphire Rapids and later): bf16 VGG16 training measured
    /// 2.9–3.3× float32.
    Amx,
    /// AVX512-BF16 dot products (AMD Zen 4, Intel Cooper Lake): measured 1.8× float32 training
    /// VGG16's block5 and 1.9× for its frozen blocks.
    Avx512,
    /// Neither.
    None,
}

impl CpuBf16 {
    /// From a `/proc/cpuinfo` text (its `flags` line; the first processor's is enough).
    pub fn from_cpuinfo(cpuinfo: &str) -> CpuBf16 {
        let flags = cpuinfo
            .lines()
            .find(|line| line.starts_with("flags"))
            .and_then(|line| line.split_once(':'))
            .map_or("", |(_, flags)| flags);
        let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
        if has("amx_bf16") && has("amx_tile") {
            CpuBf16::Amx
        } else if has("avx512_bf16") {
            CpuBf16::Avx512
        } else {
            CpuBf16::None
        }
    }

    /// This machine's (`None` where `/proc/cpuinfo` can't be read).
    pub fn detect() -> CpuBf16 {
        std::fs::read_to_string("/proc/cpuinfo").map_or(CpuBf16::None, |cpuinfo| CpuBf16::from_cpuinfo(&cpuinfo))
    }

    fn name(self) -> &'static str {
        match self {
            CpuBf16::Amx => "AMX-BF16",
            CpuBf16::Avx512 => "AVX512-BF16",
            CpuBf16::None => "no bf16 instructions",
        }
    }
}

/// What a job's `precision` means on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numerics {
    /// Forward passes under bf16 autocast.
    pub bf16: bool,
    /// The whole network — weights and inputs — laid out channels-last (what tensor cores want).
    /// On the CPU the layout is chosen per block instead (see `model::per_block_layout`).
    pub channels_last: bool,
    device: Device,
    /// Why: what was asked and what the device offers.
    why: Why,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Asked,
    AutoGpu,
    AutoCpu(CpuBf16),
}

impl Numerics {
    /// `auto` is bf16 autocast wherever the hardware computes in bf16: on a GPU (with channels-last
    /// throughout) and on a CPU with AMX-BF16 or AVX512-BF16 (frozen blocks channels-last, trained
    /// ones as they are: both measured fastest there); float32 on other CPUs. `bf16` is what a GPU
    /// job does, channels-last throughout included, on any device, so a CPU job (and the tests) run
    /// every code path a GPU job runs; `fp32` is plain float32.
    pub fn new(precision: Precision, device: Device, cpu: CpuBf16) -> Numerics {
        let gpu = device != Device::Cpu;
        let (bf16, why) = match precision {
            Precision::Auto if gpu => (true, Why::AutoGpu),
            Precision::Auto => (cpu != CpuBf16::None, Why::AutoCpu(cpu)),
            Precision::Bf16 => (true, Why::Asked),
            Precision::Fp32 => (false, Why::Asked),
        };
        let channels_last = bf16 && (gpu || precision == Precision::Bf16);
        Numerics { bf16, channels_last, device, why }
    }

    /// For the job log and the job's progress, e.g. `bf16 autocast (auto: the CPU has AMX-BF16)`.
    pub fn describe(&self) -> String {
        let what = match (self.bf16, self.channels_last) {
            (true, true) => "bf16 autocast, channels-last",
            (true, false) => "bf16 autocast",
            _ => "fp32",
        };
        match self.why {
            Why::Asked => format!("{what} (asked for)"),
            Why::AutoGpu => format!("{what} (auto: a GPU)"),
            Why::AutoCpu(cpu) => format!("{what} (auto: the CPU has {})", cpu.name()),
        }
    }

    /// Whether training steps use bf16 working copies of the weights they train
    /// ([`crate::optim::Optimizer::keep_bf16_weights`]) rather than autocast's casts: on a CPU under
    /// bf16 autocast, where Q1's phase-2 step measured 1.10–1.18× faster with the same weights, bit for
    /// bit (`cargo bench --bench train_step`). Not on a GPU until measured there.
    pub fn bf16_weights(&self) -> bool {
        self.bf16 && self.device == Device::Cpu
    }

    /// Runs `f` (a forward pass and loss) under bf16 autocast if this job uses it.
    pub fn forward<T>(&self, f: impl FnOnce() -> T) -> T {
        if !self.bf16 {
            return f();
        }
        let cuda = c_int::from(self.device != Device::Cpu);
        // SAFETY: plain calls into the shim, which catches every C++ exception; autocast state is
        // thread-local and is restored below on this same thread.
        let previous = unsafe { trainq_autocast_enter_bf16(cuda) };
        assert!(previous >= 0, "libtorch refused to enable bf16 autocast");
        let guard = ExitGuard { cuda, previous };
        let result = f();
        drop(guard);
        result
    }

    /// The batch as the network should see it (channels-last when the job uses it).
    pub fn input(&self, batch: Tensor) -> Tensor {
        if self.channels_last {
            channels_last(&batch)
        } else {
            batch
        }
    }
}

/// Leaves autocast even if the forward pass panics.
struct ExitGuard {
    cuda: c_int,
    previous: c_int,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // SAFETY: closes the region `trainq_autocast_enter_bf16` opened on this thread.
        unsafe { trainq_autocast_exit(self.cuda, self.previous) };
    }
}

/// A channels-last copy of a 4-d tensor (the same tensor if it already is).
pub fn channels_last(tensor: &Tensor) -> Tensor {
    // SAFETY: `tensor` outlives the call; the shim returns a new heap handle (owned by the returned
    // Tensor, which frees it on drop) or null on error.
    let handle = unsafe { trainq_channels_last(tensor.as_ptr()) };
    assert!(!handle.is_null(), "channels-last needs a 4-d tensor, got {:?}", tensor.size());
    unsafe { Tensor::from_ptr(handle) }
}

/// Re-lays every 4-d tensor out channels-last in place (convolution weights), keeping their
/// identity so optimizers and checkpoints see the same variables.
pub fn set_channels_last(tensors: &mut [Tensor]) {
    for tensor in tensors.iter_mut().filter(|tensor| tensor.dim() == 4) {
        // SAFETY: the handle is live for the call; `set_data` swaps the storage under no_grad.
        let status = unsafe { trainq_set_channels_last(tensor.as_mut_ptr()) };
        assert_eq!(status, 0, "libtorch refused a channels-last layout");
    }
}

/// Whether a tensor is laid out channels-last.
pub fn is_channels_last(tensor: &Tensor) -> bool {
    // SAFETY: read-only query on a live handle.
    unsafe { trainq_is_channels_last(tensor.as_ptr()) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    const AMX: &str = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\nprocessor\t: 1\n";
    const AVX512_BF16: &str = "flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n";
    const PLAIN: &str = "flags\t\t: fpu sse avx2 avx512f avx512_vnni\nbugs\t\t: amx_bf16\n";

    #[test]
    fn the_cpu_flags_say_which_bf16_units_there_are() {
        assert_eq!(CpuBf16::from_cpuinfo(AMX), CpuBf16::Amx);
        assert_eq!(CpuBf16::from_cpuinfo(AVX512_BF16), CpuBf16::Avx512);
        assert_eq!(CpuBf16::from_cpuinfo(PLAIN), CpuBf16::None, "only the flags line counts");
        assert_eq!(CpuBf16::from_cpuinfo(""), CpuBf16::None);
        assert_eq!(CpuBf16::from_cpuinfo("flags\t: amx_tile avx512_bf16x\n"), CpuBf16::None, "whole flags only");
    }

    #[test]
    fn auto_is_bf16_where_the_cpu_computes_in_bf16_and_fp32_elsewhere() {
        let on = |cpuinfo: &str| Numerics::new(Precision::Auto, Device::Cpu, CpuBf16::from_cpuinfo(cpuinfo));
        let amx = on(AMX);
        assert_eq!((amx.bf16, amx.channels_last), (true, false), "the CPU picks the layout per block");
        assert_eq!(amx.describe(), "bf16 autocast (auto: the CPU has AMX-BF16)");
        assert!(on(AVX512_BF16).bf16);
        assert_eq!(on(AVX512_BF16).describe(), "bf16 autocast (auto: the CPU has AVX512-BF16)");
        let plain = on(PLAIN);
        assert_eq!((plain.bf16, plain.channels_last), (false, false));
        assert_eq!(plain.describe(), "fp32 (auto: the CPU has no bf16 instructions)");

        let gpu = Numerics::new(Precision::Auto, Device::Cuda(0), CpuBf16::None);
        assert_eq!((gpu.bf16, gpu.channels_last), (true, true));
        assert_eq!(gpu.describe(), "bf16 autocast, channels-last (auto: a GPU)");
        assert!(!Numerics::new(Precision::Fp32, Device::Cuda(0), CpuBf16::Amx).bf16);
        assert!(!Numerics::new(Precision::Fp32, Device::Cpu, CpuBf16::Amx).bf16, "fp32 when asked, whatever the CPU");
        let asked = Numerics::new(Precision::Bf16, Device::Cpu, CpuBf16::None);
        assert_eq!(asked.describe(), "bf16 autocast, channels-last (asked for)", "what a GPU job runs");
    }

    #[test]
    fn bf16_autocast_runs_convolutions_in_bf16_and_ends_with_the_region() {
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let conv = || x.conv2d::<Tensor>(&w, None, [1], [1], [1], 1);
        let numerics = Numerics::new(Precision::Bf16, Device::Cpu, CpuBf16::None);
        let inside = numerics.forward(conv);
        assert_eq!(inside.kind(), Kind::BFloat16, "autocast picked bf16");
        assert_eq!(conv().kind(), Kind::Float, "autocast ended with the region");
        let difference = (inside.to_kind(Kind::Float) - conv()).abs().max().double_value(&[]);
        assert!(difference < 0.2, "bf16 result close to fp32: {difference}");
        assert_eq!(Numerics::new(Precision::Fp32, Device::Cpu, CpuBf16::Amx).forward(conv).kind(), Kind::Float);
    }

    #[test]
    fn channels_last_keeps_values_and_identity() {
        let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
        let y = channels_last(&x);
        assert!(is_channels_last(&y) && !is_channels_last(&x));
        assert!(y.equal(&x));
        assert_eq!(y.stride(), [60, 1, 15, 3]);
        let mut parameters = [Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true)];
        let before = parameters[0].copy();
        set_channels_last(&mut parameters);
        assert!(is_channels_last(&parameters[0]));
        assert!(parameters[0].requires_grad(), "still a trainable leaf");
        assert!(parameters[0].equal(&before));
    }
}
