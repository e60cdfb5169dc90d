"""Structural annealing: calibration data, fidelity gate, candidate structures, refit, schedule, stability."""
