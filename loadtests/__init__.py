"""mosaserve.loadtests (grows with later issues)."""
