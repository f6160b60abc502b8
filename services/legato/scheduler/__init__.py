"""The scheduler: one actor per workflow applies its run strategy and drives each run's step graph."""
