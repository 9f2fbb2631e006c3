// Test compatibility header: MACA half precision -> CUDA (see mc_runtime.h).
#pragma once
#include <cuda_fp16.h>
