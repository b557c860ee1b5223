"""Run folders: ``train()`` (train.py) makes one with a trainer and a recorder (recorder.py, the
one writer of a run's files); its record is defined once (schema.py) and read back checked
(storage.py); slots.py finishes a recipe's run exactly once; a Keras file from a stranger is read
safely (keras_reader.py) and imported as a run (keras_import.py); plots.py draws a run's curves."""
