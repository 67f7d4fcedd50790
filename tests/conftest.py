"""Test setup: without CUDA, Triton kernels run in interpret mode on the CPU.

TRITON_INTERPRET must be set before triton is first imported, so it is done here, at the
top of the first file pytest loads. With CUDA present the same tests run compiled on the GPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
