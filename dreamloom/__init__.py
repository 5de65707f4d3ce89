"""dreamloom: teach Stable Diffusion models new concepts and serve them.

The library is the single home of every behaviour; the CLI, the Kubeflow components and the
Triton models are thin callers of it.
"""

__version__ = "0.1.0"
