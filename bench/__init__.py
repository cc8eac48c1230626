"""lstmgen.bench: tokens per second of the engine against PyTorch, and how close both come to the
machine's limits (`lstmgen bench`). Each backend runs in its own process (peak memory is per
process); the ceilings are measured in the same run so that every ratio comes from one run.
"""
