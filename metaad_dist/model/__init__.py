"""Models in pure PyTorch: encoder, classifier head with temperature, normal memory and its one-class parts."""
