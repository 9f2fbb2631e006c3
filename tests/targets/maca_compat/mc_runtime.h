// Compatibility header for tests only: lets nvcc compile sbc's MACA kernels so that their
// types and syntax are checked by a real compiler. It is NOT a MetaX runtime, and code built
// with it does not behave like MACA code (NVIDIA warps have 32 lanes, MACA waves 64).
//
// What it maps:
//   mc_runtime.h      -> cuda_runtime.h (kernel keywords, threadIdx/blockIdx, __syncthreads)
//   maca_fp16.h       -> cuda_fp16.h;  maca_bfloat16.h -> cuda_bf16.h
//   __shfl_sync, __shfl_up_sync, __shfl_down_sync, __shfl_xor_sync (MACA: 64-bit lane mask,
//                        widths up to 64) -> CUDA's, with the mask required to be a 64-bit
//                        integer (static_assert: a 32-bit mask left in the MACA source fails
//                        to compile) and then truncated to CUDA's 32-bit mask, and the width
//                        clamped to 32
#pragma once
#include <cuda_runtime.h>
// every CUDA header that declares shuffles comes before the macros below
#include <cuda_fp16.h>
#include <cuda_bf16.h>

template <typename Mask>
__device__ __forceinline__ unsigned sbc_maca_mask(Mask mask) {
  static_assert(sizeof(Mask) == 8, "MACA lane masks are 64-bit (unsigned long long)");
  return static_cast<unsigned>(mask);
}

#define SBC_MACA_WIDTH(w) ((w) > 32 ? 32 : (w))
// function-like macros do not expand recursively: the inner names are CUDA's intrinsics
#define __shfl_sync(m, v, l, w) __shfl_sync(sbc_maca_mask(m), (v), (l), SBC_MACA_WIDTH(w))
#define __shfl_up_sync(m, v, d, w) __shfl_up_sync(sbc_maca_mask(m), (v), (d), SBC_MACA_WIDTH(w))
#define __shfl_down_sync(m, v, d, w) __shfl_down_sync(sbc_maca_mask(m), (v), (d), SBC_MACA_WIDTH(w))
#define __shfl_xor_sync(m, v, d, w) __shfl_xor_sync(sbc_maca_mask(m), (v), (d), SBC_MACA_WIDTH(w))
