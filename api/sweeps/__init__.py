"""Hyper-parameter sweeps: one job per point of a grid over a base job, ranked by a
validation metric; the best point's student downloads like a job's."""
