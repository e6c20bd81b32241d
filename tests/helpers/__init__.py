"""Code shared by the tests: repository paths, config composition, tiny models, toy shards, the smoke chain."""
