"""Many runs at once: compare() (comparison.py: models x seeds, one report), sweeps of
models x views x datasets x seeds from a TOML spec (sweep.py), and the same on Ray (cluster.py)."""
