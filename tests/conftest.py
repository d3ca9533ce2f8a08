"""Shared test helpers: oracles from installed peers, tolerance tables, strategies."""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU, Triton kernels run in its interpreter on CPU tensors. Triton reads the
# variable when a kernel module is first imported, so it is set before any test module
# imports ropekit's kernel.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The machine is small and shared: no per-example deadline, a fixed example budget, and
# derandomized so that a CI failure reproduces locally.
settings.register_profile(
    "ropekit",
    deadline=None,
    max_examples=40,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ropekit")

# Per-dtype tolerances against the float64 reference: about one rounding step of the
# output dtype (relative eps * |value|), plus an absolute floor for values near zero.
# Rotation of a unit-scale vector is computed in float32 and rounded once, so fp16/bf16
# results must be within one ulp of the exact rotation (atol covers the near-zero tail).
TOL: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
    torch.float32: {"rtol": 2e-6, "atol": 2e-6},
    torch.float16: {"rtol": 2**-10, "atol": 2**-14},
    torch.bfloat16: {"rtol": 2**-7, "atol": 2**-10},
}


def load_meta_functions(relpath: str, names: list[str]) -> dict[str, Any]:
    """Load top-level functions ``names`` from a file of the installed ``llama_models``.

    Meta's reference model files import ``fairscale`` (model parallel layers) at the top,
    which is not installable here without a source build. The RoPE functions themselves
    need only ``torch`` and ``math``, so we parse the file and execute just those
    definitions: the oracle is Meta's own code, unmodified.
    """
    spec = importlib.util.find_spec("llama_models")
    assert spec is not None and spec.origin is not None, "llama-models (a test dependency) is missing"
    path = Path(spec.origin).parent / relpath
    tree = ast.parse(path.read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in wanted}
    assert not missing, f"{missing} not found in {path}"
    namespace: dict[str, Any] = {"torch": torch, "math": __import__("math")}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return {name: namespace[name] for name in names}


def tol_at(dtype: torch.dtype, positions: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """``TOL[dtype]`` widened by what rounding the angle ``m θ`` to float64 can cost.

    The float64 oracles (``ropekit.spec``) round ``m θ`` once too, so they are exact only
    to ``|m θ| 2^-53`` rad: two correct computations of a float64 rotation (ropekit's
    tables add the angle in two parts, ``hi θ + lo θ``) can differ by a few times
    ``|m| 2^-53 |x|``. At ``|m| = 10^5`` that is ~1e-11, above the flat 1e-12; for
    float32 and below it is far under the dtype's own rounding.
    """
    tol = dict(TOL[dtype])
    if dtype == torch.float64 and positions.numel():
        m = float(positions.abs().max())
        tol["atol"] += 4 * m * 2.0**-53 * float(x.abs().max())
    return tol


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test (``pytestmark = pytest.mark.usefixtures(...)``):
    tiny models gain nothing from a second thread but synchronisation, and on a shared
    2-core runner two threads fighting for the cores make a file several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def module_objects(model: Any) -> list[tuple[str, Any, Any]]:
    """``(name, module, its instance attribute forward or None)`` for every submodule."""
    return [(n, m, m.__dict__.get("forward")) for n, m in model.named_modules()]


def assert_same_objects(model: Any, before: list[tuple[str, Any, Any]]) -> None:
    """``model`` holds the module objects of ``before`` (:func:`module_objects`) under the
    same names, with the same ``forward`` attributes."""
    after = module_objects(model)
    assert len(before) == len(after)
    assert all(
        a[0] == b[0] and a[1] is b[1] and a[2] is b[2] for a, b in zip(before, after, strict=True)
    )


def assert_untouched(model: Any, call: Any, match: str) -> None:
    """``call()`` raises ``UnsupportedModelError`` matching ``match`` and leaves ``model``
    as it was: the same module objects under the same names, the same ``forward``
    attributes, not marked patched (the Hugging Face patch's refusals)."""
    from ropekit.hf import UnsupportedModelError, is_patched

    before = module_objects(model)
    with pytest.raises(UnsupportedModelError, match=match):
        call()
    assert_same_objects(model, before)
    assert not is_patched(model)


def assert_float64_exact(
    got: torch.Tensor, want: torch.Tensor, unpatched: torch.Tensor, *, floor: float = 0.0
) -> None:
    """A patched float64 model's output ``got`` equals the float64 oracle's ``want`` to
    1e-12 and is 100x closer to it than the unpatched model's ``unpatched`` (unless that
    is within ``floor`` of it already: nothing to improve)."""
    err = float((got - want).abs().max())
    unpatched_err = float((unpatched - want).abs().max())
    assert got.dtype == torch.float64
    assert err <= 1e-12, err
    assert err < unpatched_err / 100 or unpatched_err < floor, (err, unpatched_err)


def count_dropin_rotations(
    monkeypatch: pytest.MonkeyPatch, function: str = "apply_rope_qk"
) -> list[bool]:
    """Record each call of ``function`` (``apply_rope_qk`` or ``apply_rope``) made by the
    patched families' drop-ins (:mod:`ropekit.hf.dropins`): one entry per call, its
    ``interleaved`` flag."""
    import ropekit.hf.dropins as dropins

    calls: list[bool] = []
    real = getattr(dropins, function)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("interleaved", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(dropins, function, counting)
    return calls
