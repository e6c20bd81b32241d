"""Process-level facts read from the environment: which rank and which device this process is."""
