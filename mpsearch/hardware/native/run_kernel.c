/* Run one TVM-compiled kernel from a shared library without the TVM runtime (for qemu-user).
 *
 * usage: run_kernel LIB SYMBOL ARG...   with ARG = dtype:shape:file, e.g. float32:1x4x8x8:x.bin
 * Each file holds the tensor's raw bytes; after the call every tensor is written back to its file
 * (the kernel's output is its last argument). An untuned CPU kernel needs from the runtime only the
 * error hook and the workspace allocator, which the library reaches through function-pointer
 * variables that the TVM runtime fills at load: this driver fills them. Exit status 0 on success.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tvm/ffi/c_api.h>

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  fprintf(stderr, "kernel error: %s:", kind);
  for (int32_t i = 0; i < n; ++i) fprintf(stderr, " %s", parts[i]);
  fprintf(stderr, "\n");
}

static void* alloc_workspace(int device_type, int device_id, uint64_t nbytes, int code, int bits) {
  (void)device_type; (void)device_id; (void)code; (void)bits;
  return aligned_alloc(64, (nbytes + 63) / 64 * 64);
}

static int free_workspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  free(ptr);
  return 0;
}

typedef int (*safe_call)(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);

static int parse_dtype(const char* s, DLDataType* t) {
  struct { const char* name; uint8_t code; uint8_t bits; } known[] = {
      {"float32", kDLFloat, 32}, {"float16", kDLFloat, 16}, {"int32", kDLInt, 32}, {"int8", kDLInt, 8},
      {"uint8", kDLUInt, 8}, {"uint16", kDLUInt, 16}, {"uint32", kDLUInt, 32}, {"uint64", kDLUInt, 64}};
  for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); ++i) {
    if (strcmp(s, known[i].name) == 0) {
      t->code = known[i].code; t->bits = known[i].bits; t->lanes = 1;
      return 0;
    }
  }
  return -1;
}

int main(int argc, char** argv) {
  if (argc < 4) { fprintf(stderr, "usage: %s LIB SYMBOL dtype:shape:file...\n", argv[0]); return 2; }
  void* lib = dlopen(argv[1], RTLD_NOW);
  if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 3; }
  void** slot = (void**)dlsym(lib, "__TVMBackendAllocWorkspace");
  if (slot) *slot = (void*)alloc_workspace;
  slot = (void**)dlsym(lib, "__TVMBackendFreeWorkspace");
  if (slot) *slot = (void*)free_workspace;
  if (dlsym(lib, "__TVMBackendParallelLaunch")) {
    fprintf(stderr, "the kernel uses TVM's thread pool; build it single-threaded (num-cores 1)\n");
    return 3;
  }
  safe_call fn = (safe_call)dlsym(lib, argv[2]);
  if (!fn) { fprintf(stderr, "dlsym: %s\n", dlerror()); return 3; }
  int n = argc - 3;
  DLTensor* tensors = calloc(n, sizeof(DLTensor));
  TVMFFIAny* args = calloc(n, sizeof(TVMFFIAny));
  char** files = calloc(n, sizeof(char*));
  size_t* sizes = calloc(n, sizeof(size_t));
  for (int i = 0; i < n; ++i) {
    char* spec = strdup(argv[3 + i]);
    char* dtype = strtok(spec, ":");
    char* shape = strtok(NULL, ":");
    files[i] = strtok(NULL, ":");
    if (!dtype || !shape || !files[i] || parse_dtype(dtype, &tensors[i].dtype)) {
      fprintf(stderr, "bad argument %s\n", argv[3 + i]); return 2;
    }
    int64_t* dims = calloc(8, sizeof(int64_t));
    int ndim = 0;
    size_t count = 1;
    for (char* d = strtok(shape, "x"); d && ndim < 8; d = strtok(NULL, "x")) {
      dims[ndim] = atoll(d); count *= (size_t)dims[ndim]; ++ndim;
    }
    sizes[i] = count * tensors[i].dtype.bits / 8;
    void* data = aligned_alloc(64, (sizes[i] + 63) / 64 * 64);
    FILE* f = fopen(files[i], "rb");
    if (!f || fread(data, 1, sizes[i], f) != sizes[i]) { fprintf(stderr, "cannot read %s\n", files[i]); return 4; }
    fclose(f);
    tensors[i].data = data;
    tensors[i].device.device_type = kDLCPU;
    tensors[i].ndim = ndim;
    tensors[i].shape = dims;
    args[i].type_index = kTVMFFIDLTensorPtr;
    args[i].v_ptr = &tensors[i];
  }
  TVMFFIAny result;
  memset(&result, 0, sizeof(result));
  int rc = fn(NULL, args, n, &result);
  if (rc != 0) { fprintf(stderr, "kernel returned %d\n", rc); return 5; }
  for (int i = 0; i < n; ++i) {
    FILE* f = fopen(files[i], "wb");
    if (!f || fwrite(tensors[i].data, 1, sizes[i], f) != sizes[i]) { fprintf(stderr, "cannot write %s\n", files[i]); return 4; }
    fclose(f);
  }
  return 0;
}
