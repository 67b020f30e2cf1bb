"""Robot work records: the versioned schema, building tables from sensor frames, cleaning."""
