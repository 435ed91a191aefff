"""Hydra configs, shipped inside the package as lmlab.conf (see pyproject.toml).

Importing this package registers the typed schema that the YAML files extend, so composing from
`pkg://lmlab.conf` (the CLI, hydra.compose in tests, a notebook) always validates against it.
"""
from lmlab.resolvers import register_configs

register_configs()
