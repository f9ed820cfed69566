// GPU memory figures from libtorch's CUDA caching allocator (the bytes its
// tensors hold, their peak, and what the allocator has reserved from the
// driver), and the device's name and CUDA versions. Compiled by build.rs
// only where libtorch has CUDA; callers check for a device first.
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <exception>

// Defined in libtorch_cuda (ATen/cuda/CUDAContextLight.h, whose includes
// pull in the cuBLAS and cuSPARSE headers; declared here instead).
namespace at {
namespace cuda {
cudaDeviceProp* getDeviceProperties(c10::DeviceIndex device);
}
}  // namespace at

namespace {
void report(const char* what, char* err, size_t len) {
    if (err != nullptr && len > 0) std::snprintf(err, len, "%s", what);
}
// cudart is loaded by libtorch_cuda; looked up at run time so that this
// file needs no link to it (the wheels ship it under a versioned name).
int cudart_version(const char* symbol) {
    using Fn = int (*)(int*);
    auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, symbol));
    int version = 0;
    if (fn == nullptr || fn(&version) != 0) return -1;
    return version;
}
}  // namespace

extern "C" {

int gradcache_cuda_device_count() { return static_cast<int>(c10::cuda::device_count()); }

int gradcache_cuda_memory(int device, int64_t* allocated, int64_t* peak, int64_t* reserved, char* err, size_t len) {
    try {
        if (device < 0 || device >= static_cast<int>(c10::cuda::device_count())) {
            report("no such CUDA device", err, len);
            return 1;
        }
        auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
        const size_t all = 0;  // StatType::AGGREGATE
        *allocated = stats.allocated_bytes[all].current;
        *peak = stats.allocated_bytes[all].peak;
        *reserved = stats.reserved_bytes[all].current;
        return 0;
    } catch (const std::exception& e) {
        report(e.what(), err, len);
        return 1;
    }
}

int gradcache_cuda_reset_peak(int device, char* err, size_t len) {
    try {
        if (device < 0 || device >= static_cast<int>(c10::cuda::device_count())) {
            report("no such CUDA device", err, len);
            return 1;
        }
        c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
        return 0;
    } catch (const std::exception& e) {
        report(e.what(), err, len);
        return 1;
    }
}

// Name (into `name`), total memory, compute capability, and the CUDA
// runtime and driver versions (e.g. 12010 for 12.1; -1 when unknown).
int gradcache_cuda_device(int device, char* name, size_t name_len, int64_t* total, int* major, int* minor, int* runtime, int* driver, char* err, size_t len) {
    try {
        if (device < 0 || device >= static_cast<int>(c10::cuda::device_count())) {
            report("no such CUDA device", err, len);
            return 1;
        }
        cudaDeviceProp* p = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device));
        std::snprintf(name, name_len, "%s", p->name);
        *total = static_cast<int64_t>(p->totalGlobalMem);
        *major = p->major;
        *minor = p->minor;
        *runtime = cudart_version("cudaRuntimeGetVersion");
        *driver = cudart_version("cudaDriverGetVersion");
        return 0;
    } catch (const std::exception& e) {
        report(e.what(), err, len);
        return 1;
    }
}

}  // extern "C"
