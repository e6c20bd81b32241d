"""Data: video I/O, the synthetic toy dataset, webdataset shard pipelines and the data module.

Submodules are imported explicitly (``vldm.data.toy``, ``vldm.data.shards``, ...) so that the
toy-data CLI does not pay for importing torch.
"""
