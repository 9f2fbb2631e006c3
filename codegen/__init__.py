"""Code generation: sbc IR -> TE kernels (lower) -> Relax/TIR, CPU schedules -> LLVM (build);
GPU schedules and device code for cuda / maca (schedule_gpu, gpu_compile, maca)."""

__all__ = ["BuiltModule", "build"]


def __getattr__(name):
    # codegen.build imports TVM (5 s): loaded when first asked for, so that codegen.targets'
    # name and arch checks stay instant. `build` names the function, as it always did.
    if name in __all__:
        import importlib
        module = importlib.import_module("sbc.codegen.build")
        globals().update(build=module.build, BuiltModule=module.BuiltModule)
        return globals()[name]
    raise AttributeError(name)
