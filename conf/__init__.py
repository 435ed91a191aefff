"""Hydra configs, shipped inside the package as lmlab.conf (see pyproject.toml)."""
