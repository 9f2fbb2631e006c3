"""Code generation: sbc IR -> TE kernels (lower) -> Relax/TIR, CPU schedules -> LLVM (build)."""

from sbc.codegen.build import BuiltModule, build

__all__ = ["BuiltModule", "build"]
