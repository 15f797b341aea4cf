// A CUDA driver that compiles and never runs: libcuda.so.1 for machines without a GPU.
//
// burn's CUDA backend (cubecl-cuda) generates CUDA C++ for each kernel, compiles it with the real
// NVRTC for the device's architecture and hands the PTX to the driver. This library answers the
// driver calls as an H100/H200 (sm_90, 132 SMs, 227 KiB of shared memory a block) would, keeps
// "device" memory in host memory, writes each PTX module it is given to $NVRTC_CHECK_DIR and
// logs each launch there (launches.tsv), refuses a launch outside sm_90's limits -- and runs
// nothing: kernels leave their outputs as they were. So a program run under it proves only that
// every kernel it launches is accepted by NVRTC and fits sm_90's launch limits (the PTX is then
// assembled by ptxas), never that a kernel computes the right thing or how fast: that needs a
// GPU (bench/gpu.sh).
//
// Build: cc -shared -fPIC -O2 -o libcuda.so.1 libcuda.c (bench/nvrtc-check.sh does it).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void *CUhandle;

enum { OK = 0, INVALID_VALUE = 1 };

// Numbered from $NVRTC_CHECK_DIR's modules; a module's functions are remembered by name.
struct function {
  char name[256];
  int module;
};
static int modules;
static char context_tag, stream_tag, event_tag;

static FILE *open_in_dir(const char *name, const char *mode) {
  const char *dir = getenv("NVRTC_CHECK_DIR");
  if (!dir) return NULL;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return fopen(path, mode);
}

CUresult cuInit(unsigned flags) { (void)flags; return OK; }
CUresult cuDriverGetVersion(int *version) { *version = 13000; return OK; }
CUresult cuDeviceGetCount(int *count) { *count = 1; return OK; }
CUresult cuDeviceGet(CUdevice *device, int ordinal) {
  *device = ordinal;
  return ordinal == 0 ? OK : INVALID_VALUE;
}
CUresult cuDeviceGetName(char *name, int len, CUdevice device) {
  (void)device;
  snprintf(name, (size_t)len, "compile-only sm_90 (bench/nvrtc-check: nothing runs)");
  return OK;
}

// The attributes cubecl-cuda asks for, as an H100 SXM and an H200 report them (CUdevice_attribute
// numbers from cuda.h); every other one is 0.
CUresult cuDeviceGetAttribute(int *value, int attribute, CUdevice device) {
  (void)device;
  switch (attribute) {
  case 1: *value = 1024; break;       // MAX_THREADS_PER_BLOCK
  case 2: case 3: *value = 1024; break; // MAX_BLOCK_DIM_X, _Y
  case 4: *value = 64; break;         // MAX_BLOCK_DIM_Z
  case 5: *value = 2147483647; break; // MAX_GRID_DIM_X
  case 6: case 7: *value = 65535; break; // MAX_GRID_DIM_Y, _Z
  case 8: *value = 49152; break;      // MAX_SHARED_MEMORY_PER_BLOCK
  case 10: *value = 32; break;        // WARP_SIZE
  case 16: *value = 132; break;       // MULTIPROCESSOR_COUNT
  case 75: *value = 9; break;         // COMPUTE_CAPABILITY_MAJOR
  case 76: *value = 0; break;         // COMPUTE_CAPABILITY_MINOR
  case 97: *value = 232448; break;    // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
  default: *value = 0;
  }
  return OK;
}

// 8 GiB: cubecl sizes its memory pages from this; host memory is lazily mapped.
CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice device) {
  (void)device;
  *bytes = (size_t)8 << 30;
  return OK;
}
CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
  *free_bytes = *total = (size_t)8 << 30;
  return OK;
}

CUresult cuDevicePrimaryCtxRetain(CUhandle *context, CUdevice device) {
  (void)device;
  *context = &context_tag;
  return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device) { (void)device; return OK; }
CUresult cuCtxSetCurrent(CUhandle context) { (void)context; return OK; }
CUresult cuCtxGetCurrent(CUhandle *context) { *context = &context_tag; return OK; }
CUresult cuCtxGetDevice(CUdevice *device) { *device = 0; return OK; }
CUresult cuCtxSynchronize(void) { return OK; }

CUresult cuStreamCreate(CUhandle *stream, unsigned flags) {
  (void)flags;
  *stream = &stream_tag;
  return OK;
}
CUresult cuStreamCreateWithPriority(CUhandle *stream, unsigned flags, int priority) {
  (void)priority;
  return cuStreamCreate(stream, flags);
}
CUresult cuStreamDestroy_v2(CUhandle stream) { (void)stream; return OK; }
CUresult cuStreamSynchronize(CUhandle stream) { (void)stream; return OK; }
CUresult cuStreamWaitEvent(CUhandle stream, CUhandle event, unsigned flags) {
  (void)stream; (void)event; (void)flags;
  return OK;
}
CUresult cuEventCreate(CUhandle *event, unsigned flags) {
  (void)flags;
  *event = &event_tag;
  return OK;
}
CUresult cuEventRecord(CUhandle event, CUhandle stream) { (void)event; (void)stream; return OK; }
CUresult cuEventSynchronize(CUhandle event) { (void)event; return OK; }
CUresult cuEventQuery(CUhandle event) { (void)event; return OK; }
CUresult cuEventDestroy_v2(CUhandle event) { (void)event; return OK; }
CUresult cuEventElapsedTime(float *ms, CUhandle start, CUhandle end) {
  (void)start; (void)end;
  *ms = 0;
  return OK;
}
CUresult cuEventElapsedTime_v2(float *ms, CUhandle start, CUhandle end) {
  return cuEventElapsedTime(ms, start, end);
}

// "Device" memory is host memory, zeroed; copies are memcpy.
CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t bytes) {
  void *p = calloc(1, bytes ? bytes : 1);
  if (!p) return 2; // CUDA_ERROR_OUT_OF_MEMORY
  *ptr = (CUdeviceptr)p;
  return OK;
}
CUresult cuMemAllocAsync(CUdeviceptr *ptr, size_t bytes, CUhandle stream) {
  (void)stream;
  return cuMemAlloc_v2(ptr, bytes);
}
CUresult cuMemFree_v2(CUdeviceptr ptr) { free((void *)ptr); return OK; }
CUresult cuMemFreeAsync(CUdeviceptr ptr, CUhandle stream) { (void)stream; return cuMemFree_v2(ptr); }
CUresult cuMemAllocHost_v2(void **ptr, size_t bytes) {
  *ptr = calloc(1, bytes ? bytes : 1);
  return *ptr ? OK : 2;
}
CUresult cuMemHostAlloc(void **ptr, size_t bytes, unsigned flags) {
  (void)flags;
  return cuMemAllocHost_v2(ptr, bytes);
}
CUresult cuMemFreeHost(void *ptr) { free(ptr); return OK; }
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t bytes) {
  memcpy((void *)dst, src, bytes);
  return OK;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t bytes, CUhandle stream) {
  (void)stream;
  return cuMemcpyHtoD_v2(dst, src, bytes);
}
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t bytes) {
  memcpy(dst, (const void *)src, bytes);
  return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t bytes, CUhandle stream) {
  (void)stream;
  return cuMemcpyDtoH_v2(dst, src, bytes);
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUhandle stream) {
  (void)stream;
  memmove((void *)dst, (const void *)src, bytes);
  return OK;
}

// A strided copy (cuda.h's CUDA_MEMCPY2D); host and "device" pointers are both host memory.
typedef struct {
  size_t src_x, src_y;
  int src_type;
  const void *src_host;
  CUdeviceptr src_device;
  void *src_array;
  size_t src_pitch;
  size_t dst_x, dst_y;
  int dst_type;
  void *dst_host;
  CUdeviceptr dst_device;
  void *dst_array;
  size_t dst_pitch;
  size_t width, height;
} Copy2d;
enum { HOST_MEMORY = 1 };
CUresult cuMemcpy2D_v2(const Copy2d *c) {
  const char *src = c->src_type == HOST_MEMORY ? c->src_host : (const void *)c->src_device;
  char *dst = c->dst_type == HOST_MEMORY ? c->dst_host : (void *)c->dst_device;
  for (size_t row = 0; row < c->height; row++)
    memmove(dst + (c->dst_y + row) * c->dst_pitch + c->dst_x,
            src + (c->src_y + row) * c->src_pitch + c->src_x, c->width);
  return OK;
}
CUresult cuMemcpy2DAsync_v2(const Copy2d *copy, CUhandle stream) {
  (void)stream;
  return cuMemcpy2D_v2(copy);
}

// Each module's PTX (NVRTC's output for one kernel) is kept for ptxas.
CUresult cuModuleLoadData(CUhandle *module, const void *image) {
  char name[64];
  snprintf(name, sizeof name, "%04d.ptx", ++modules);
  FILE *f = open_in_dir(name, "w");
  if (f) {
    fputs((const char *)image, f);
    fclose(f);
  }
  *module = (CUhandle)(size_t)modules;
  return OK;
}
CUresult cuModuleUnload(CUhandle module) { (void)module; return OK; }
CUresult cuModuleGetFunction(CUhandle *function, CUhandle module, const char *name) {
  struct function *f = calloc(1, sizeof *f);
  if (!f) return 2;
  snprintf(f->name, sizeof f->name, "%s", name);
  f->module = (int)(size_t)module;
  *function = f;
  return OK;
}
CUresult cuFuncSetAttribute(CUhandle function, int attribute, int value) {
  (void)function; (void)attribute; (void)value;
  return OK;
}

// A launch the real driver would refuse on sm_90, said on stderr; burn's backend fails the run.
static CUresult refuse(const struct function *f, const char *why) {
  fprintf(stderr, "compile-only driver: launch of %s refused: %s\n", f->name, why);
  return INVALID_VALUE;
}

// One line a launch: module, kernel, grid, block, dynamic shared memory. Nothing runs. (Registers
// times units, the one limit that needs the assembled kernel, summary.py checks with ptxas'.)
CUresult cuLaunchKernel(CUhandle function, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                        unsigned by, unsigned bz, unsigned shared, CUhandle stream, void **params,
                        void **extra) {
  (void)stream; (void)params; (void)extra;
  struct function *f = function;
  if (!gx || !gy || !gz || !bx || !by || !bz) return refuse(f, "an empty grid or cube");
  if (gx > 2147483647u || gy > 65535 || gz > 65535) return refuse(f, "too many cubes");
  if (bx > 1024 || by > 1024 || bz > 64 || bx * by * bz > 1024)
    return refuse(f, "more than 1,024 units a cube");
  if (shared > 232448) return refuse(f, "more than 227 KiB of shared memory");
  FILE *log = open_in_dir("launches.tsv", "a");
  if (log) {
    fprintf(log, "%04d\t%s\t%u,%u,%u\t%u,%u,%u\t%u\n", f->module, f->name, gx, gy, gz, bx, by, bz,
            shared);
    fclose(log);
  }
  return OK;
}

// NVRTC itself loads libcuda.so.1 and asks for the driver's private tables; a driver without them
// says so, and NVRTC compiles without (a missing symbol makes it crash).
CUresult cuGetExportTable(const void **table, const void *id) {
  (void)id;
  *table = NULL;
  return 801; // CUDA_ERROR_NOT_SUPPORTED
}

static const char *const no_error = "no error (compile-only driver)";
CUresult cuGetErrorString(CUresult error, const char **text) { (void)error; *text = no_error; return OK; }
CUresult cuGetErrorName(CUresult error, const char **text) { (void)error; *text = no_error; return OK; }
