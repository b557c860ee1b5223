"""The floor every layer stands on: the project's error types (errors.py), files written whole
and read safely (fileio.py), the registries' one rule (registry.py), facts about this machine
(system.py), durations as people write them (units.py), and the statistics verdicts rest on
(stats.py). No torch here."""
