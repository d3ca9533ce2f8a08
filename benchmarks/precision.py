"""Max |cos/sin - exact| of ropekit's float32 tables vs the float32-angle recipe.

"Exact" is 40-digit mpmath arithmetic on theta ** (-2i/d). Run:

    .venv/bin/python benchmarks/precision.py
"""

from __future__ import annotations

import mpmath
import torch

import ropekit

mpmath.mp.dps = 40
D = 128


def exact(position: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    angles = [mpmath.mpf(position) * mpmath.power(theta, mpmath.mpf(-2 * i) / D) for i in range(D // 2)]
    return (
        torch.tensor([float(mpmath.cos(a)) for a in angles], dtype=torch.float64),
        torch.tensor([float(mpmath.sin(a)) for a in angles], dtype=torch.float64),
    )


def error(cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> float:
    return max(float((cos[0].double() - c).abs().max()), float((sin[0].double() - s).abs().max()))


def main() -> None:
    print(f"head_dim={D}, all {D // 2} pairs; max |error| of cos and sin (float32 outputs)")
    print(f"{'theta':>10} {'position':>10} {'fp32 angle':>12} {'ropekit':>12}")
    for theta in (1e4, 5e5, 1e7):
        freqs = ropekit.inv_freq(D, theta)
        for position in (1_000_000, 2**24):
            c, s = exact(position, theta)
            ours_c, ours_s = ropekit.cos_sin(freqs, torch.tensor([position]))
            a32 = torch.tensor([float(position)], dtype=torch.float32)[:, None] * freqs.float()
            naive = error(a32.cos(), a32.sin(), c, s)
            ours = error(ours_c, ours_s, c, s)
            print(f"{theta:>10.0e} {position:>10} {naive:>12.2e} {ours:>12.2e}")


if __name__ == "__main__":
    main()
