"""Fixed connection masks for linear layers: how they are drawn, allocated and applied."""
