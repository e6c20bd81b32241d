"""Bridge to diffusers' reference Stable Video Diffusion, for tests and benchmarks (needs the dev extras)."""
