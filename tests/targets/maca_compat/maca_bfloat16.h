// Test compatibility header: MACA bfloat16 -> CUDA (see mc_runtime.h).
#pragma once
#include <cuda_bf16.h>
