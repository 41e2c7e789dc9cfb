"""Episodes: which normal and anomaly rows each meta-training episode pairs, built in memory, from bounded buffers, or by Ray sampler actors."""
