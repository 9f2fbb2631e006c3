"""Hand-written TIR kernels for the ops whose best loop structure TE cannot express (a
recurrence over T, an online softmax over a ring buffer). Each module builds a PrimFunc for one
node from its checked dims; the op families of `codegen.lower` (linear_attention, spike)
register them as kernel lowerings, and `signatures` holds each op's buffer signature, shared by
its CPU and GPU kernels."""
