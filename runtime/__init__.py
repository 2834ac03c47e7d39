"""mosaserve.runtime (grows with later issues)."""
