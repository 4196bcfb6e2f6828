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

/// What a job's `precision` means on its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numerics {
    /// Forward passes under bf16 autocast.
    pub bf16: bool,
    /// Convolution weights and inputs laid out channels-last (what tensor cores want).
    pub channels_last: bool,
    device: Device,
}

impl Numerics {
    /// `auto` is bf16 + channels-last on a GPU and fp32 on the CPU (where bf16 was measured
    /// slower); `bf16` is bf16 + channels-last anywhere, so a CPU job (and the tests) run every
    /// code path a GPU job runs; `fp32` is plain float32.
    pub fn new(precision: Precision, device: Device) -> Numerics {
        let bf16 = match precision {
            Precision::Auto => device != Device::Cpu,
            Precision::Bf16 => true,
            Precision::Fp32 => false,
        };
        Numerics { bf16, channels_last: bf16, device }
    }

    /// For the job log.
    pub fn describe(&self) -> &'static str {
        match (self.bf16, self.channels_last) {
            (true, true) => "bf16 autocast, channels-last",
            (true, false) => "bf16 autocast",
            _ => "fp32",
        }
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

    #[test]
    fn auto_is_fp32_on_the_cpu_and_bf16_with_channels_last_on_a_gpu() {
        let cpu = Numerics::new(Precision::Auto, Device::Cpu);
        assert_eq!((cpu.bf16, cpu.channels_last, cpu.describe()), (false, false, "fp32"));
        let gpu = Numerics::new(Precision::Auto, Device::Cuda(0));
        assert_eq!((gpu.bf16, gpu.channels_last, gpu.describe()), (true, true, "bf16 autocast, channels-last"));
        assert!(!Numerics::new(Precision::Fp32, Device::Cuda(0)).bf16);
        assert_eq!(Numerics::new(Precision::Bf16, Device::Cpu).describe(), "bf16 autocast, channels-last");
    }

    #[test]
    fn bf16_autocast_runs_convolutions_in_bf16_and_ends_with_the_region() {
        let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let conv = || x.conv2d::<Tensor>(&w, None, [1], [1], [1], 1);
        let numerics = Numerics::new(Precision::Bf16, Device::Cpu);
        let inside = numerics.forward(conv);
        assert_eq!(inside.kind(), Kind::BFloat16, "autocast picked bf16");
        assert_eq!(conv().kind(), Kind::Float, "autocast ended with the region");
        let difference = (inside.to_kind(Kind::Float) - conv()).abs().max().double_value(&[]);
        assert!(difference < 0.2, "bf16 result close to fp32: {difference}");
        assert_eq!(Numerics::new(Precision::Fp32, Device::Cpu).forward(conv).kind(), Kind::Float);
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
