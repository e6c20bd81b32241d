"""Offline jobs, each ``python -m vldm.jobs.<name>``: toy data, latent caching, export, the toy check,
the demo summary. Jobs sit above the library and are imported by nothing in it."""
