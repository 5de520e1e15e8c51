"""The training loop and what surrounds it: devices, checkpoints, distributed workers."""
