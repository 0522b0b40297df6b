"""Ray Tune sweeps of Hydra jobs: search spaces, trials, reporting and results."""
