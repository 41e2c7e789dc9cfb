"""Ray Tune sweeps over the same trainer (configs/tune/)."""
