"""Methods: how a training step updates the weights (SGD, SAM and its family, bSAM)."""
