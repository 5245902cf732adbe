"""Map files: the bundle container and schema, per-image metadata, domain fits."""
