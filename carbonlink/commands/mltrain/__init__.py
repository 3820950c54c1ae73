"""Training and evaluating the anomaly model on simulated faults (``carbonlink ml …``); needs the ``ml`` extra."""
