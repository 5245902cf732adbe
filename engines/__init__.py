"""Engine manifests; built engine files land in this folder of a source checkout."""
