"""ropekit's lab: a small Llama-style byte model, its data, trainer, the
length-extrapolation experiment and the benchmark harness, all built on :mod:`ropekit`.

The lab is a set of plain programs, kept out of the library (nanoGPT-style): read them
top to bottom, change them freely. Imports flow one way: ``ropekit_lab`` imports
``ropekit``; ``ropekit`` never imports ``ropekit_lab``.

* :mod:`ropekit_lab.model`: ``ModelConfig``, ``Transformer``, ``KVCache``, ``generate``;
* :mod:`ropekit_lab.data`: byte-level corpus (the Python stdlib by default);
* :mod:`ropekit_lab.train`: AdamW trainer, crash-safe checkpoints, data parallelism;
* :mod:`ropekit_lab.extrapolate`: the length-extrapolation experiment;
* :mod:`ropekit_lab.bench`: the benchmark harness and the peer implementations;
* :mod:`ropekit_lab.cli`: the ``ropekit-lab`` command (``train``, ``extrapolate``, ``bench``).

This file imports nothing, so ``ropekit-lab --help`` does not pay for importing torch.
"""

# The API is the modules listed above; import them by name (``from ropekit_lab.model
# import Transformer``). Nothing is re-exported here, to keep the package import free.
__all__: list[str] = []
