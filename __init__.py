"""segvlad-edge: offline visual place recognition (SegVLAD) for robots and drones."""
__version__ = "0.1.0"
