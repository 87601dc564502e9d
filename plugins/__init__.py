"""llamaport.plugins (see README)."""
