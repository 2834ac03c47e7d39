"""mosaserve.deploy (grows with later issues)."""
