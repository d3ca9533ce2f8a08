"""``Backend.CPU``: the C kernel (``rope_cpu.c``) and its loader."""

from .loader import cpu_kernel_available, cpu_kernel_status, load, rotate_cpu

__all__ = ["cpu_kernel_available", "cpu_kernel_status", "load", "rotate_cpu"]
