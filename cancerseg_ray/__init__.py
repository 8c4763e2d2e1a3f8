"""CancerSeg-XA histopathology segmentation on Ray Data, Ray Train and Ray Serve."""

__version__ = "0.1.0"
