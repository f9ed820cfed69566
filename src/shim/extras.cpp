// What gradcache needs from libtorch's C++ API that tch 0.17 does not wrap:
// autocast on any device type with a chosen dtype (tch's `autocast` is
// CUDA-only and keeps CUDA's default float16), a dense zero gradient set on
// a leaf without a backward pass, the grad mode, and the libtorch version.
// Every function catches C++ exceptions and reports them as a message.
#include <ATen/autocast_mode.h>
#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/version.h>

#include <cstdio>
#include <exception>

namespace {
void report(const std::exception& e, char* err, size_t len) {
    if (err != nullptr && len > 0) std::snprintf(err, len, "%s", e.what());
}
}  // namespace

extern "C" {

const char* gradcache_torch_version() { return TORCH_VERSION; }

// Reads the autocast state of `device_type` (a c10::DeviceType code).
int gradcache_autocast_get(int device_type, int* enabled, int* dtype, char* err, size_t len) {
    try {
        auto device = static_cast<c10::DeviceType>(device_type);
        *enabled = at::autocast::is_autocast_enabled(device) ? 1 : 0;
        *dtype = static_cast<int>(at::autocast::get_autocast_dtype(device));
        return 0;
    } catch (const std::exception& e) {
        report(e, err, len);
        return 1;
    }
}

// Sets it; `nesting` +1 enters a region, -1 leaves one (the cast cache is
// cleared when the outermost region is left, as torch.autocast does).
int gradcache_autocast_set(int device_type, int enabled, int dtype, int nesting, char* err, size_t len) {
    try {
        auto device = static_cast<c10::DeviceType>(device_type);
        at::autocast::set_autocast_dtype(device, static_cast<at::ScalarType>(dtype));
        at::autocast::set_autocast_enabled(device, enabled != 0);
        if (nesting > 0) {
            at::autocast::increment_nesting();
        } else if (nesting < 0 && at::autocast::decrement_nesting() == 0) {
            at::autocast::clear_cache();
        }
        return 0;
    } catch (const std::exception& e) {
        report(e, err, len);
        return 1;
    }
}

// Whether autograd records operations on this thread.
int gradcache_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }

// Gives `t` (a leaf that requires grad) a dense zero gradient if it has
// none, so that sparse gradients accumulate into it in place.
int gradcache_define_dense_grad(const at::Tensor* t, char* err, size_t len) {
    try {
        if (t->requires_grad() && !t->grad().defined()) {
            t->mutable_grad() = at::zeros_like(*t);
        }
        return 0;
    } catch (const std::exception& e) {
        report(e, err, len);
        return 1;
    }
}

}  // extern "C"
