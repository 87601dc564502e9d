"""llamaport.exporter (see README)."""
