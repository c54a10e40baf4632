"""Fused ops: each file holds a Triton kernel, its validating launcher and a torch path."""
