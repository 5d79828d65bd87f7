"""Training container: ``preprocess``, ``train`` and ``evaluate`` entry points."""
