// What tch 0.24 cannot ask libtorch for, in a few C functions the worker calls (precision.rs):
// autocast to bfloat16 (tch's `autocast` only switches CUDA autocast on, with its default dtype
// float16, which would need loss scaling), channels-last memory format (no tch binding), and
// dropping a gradient (tch can only zero it).
// Every function catches C++ exceptions: none may unwind into Rust.

#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>

namespace {
at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

// Enters bfloat16 autocast for CUDA (cuda = 1) or the CPU (cuda = 0) on this thread. Returns
// whether autocast was enabled before (0 or 1, to hand to trainq_autocast_exit), or -1 on error.
int trainq_autocast_enter_bf16(int cuda) {
  try {
    auto device = device_type(cuda);
    bool previous = at::autocast::is_autocast_enabled(device);
    at::autocast::set_autocast_dtype(device, at::kBFloat16);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::increment_nesting();
    return previous ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Leaves the autocast region trainq_autocast_enter_bf16 opened; 0 on success.
int trainq_autocast_exit(int cuda, int previous) {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_type(cuda), previous == 1);
    return 0;
  } catch (...) {
    return -1;
  }
}

// A new handle to `tensor` in channels-last layout (a copy unless it already is); null on error.
at::Tensor* trainq_channels_last(const at::Tensor* tensor) {
  try {
    return new at::Tensor(tensor->contiguous(at::MemoryFormat::ChannelsLast));
  } catch (...) {
    return nullptr;
  }
}

// Re-lays a 4-d parameter out channels-last in place (same tensor, same autograd identity, new
// storage), as PyTorch's `module.to(memory_format=torch.channels_last)` does; 0 on success.
int trainq_set_channels_last(at::Tensor* tensor) {
  try {
    at::NoGradGuard no_grad;
    tensor->set_data(tensor->contiguous(at::MemoryFormat::ChannelsLast));
    return 0;
  } catch (...) {
    return -1;
  }
}

// 1 if `tensor` is laid out channels-last, 0 if not.
int trainq_is_channels_last(const at::Tensor* tensor) {
  return tensor->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0;
}

// Drops `tensor`'s gradient (PyTorch's `zero_grad(set_to_none=True)`): the next backward writes
// a fresh one instead of adding into zeros, which saves a pass over every parameter's gradient
// (and, on a GPU, two kernel launches per parameter). 0 on success.
int trainq_clear_grad(at::Tensor* tensor) {
  try {
    tensor->mutable_grad().reset();
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
