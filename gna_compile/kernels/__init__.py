"""Kernels: reference (torch), triton (Hopper), flex; token permutation; custom-op wiring."""
