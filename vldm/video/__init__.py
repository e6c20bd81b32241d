"""Video signals without models: pixel conversions and optical-flow motion, shared by training,
sampling, evaluation and data_curation."""
