"""Files: safe weight loading, streamed safetensors, video decoding and encoding, tar shard members.

The lowest layer: nothing here imports another part of vldm.
"""
