"""Dataset preparation: file lists, verified downloads and the prepare pipeline."""
