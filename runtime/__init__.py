"""llamaport.runtime (see README)."""
