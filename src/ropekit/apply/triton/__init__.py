"""``Backend.TRITON``: placeholder while the kernel is being split (see old_triton_kernel)."""


def load() -> str:
    return "the Triton backend is being rebuilt"
