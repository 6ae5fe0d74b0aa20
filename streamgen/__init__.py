"""streamgen: autoregressive streaming video generation."""
