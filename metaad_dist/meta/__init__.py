"""The meta-learner in pure PyTorch: losses, the first-order inner/outer step, PCGrad and the episode curriculum."""
