"""nlsweep: rigorous, resumable ablation sweeps for Nested Learning mechanisms."""

__version__ = "0.1.0"
