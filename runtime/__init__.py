"""The torch-free runtime: backends, features, segmenters, SuperSegments, VLAD, PCA, index, ranking, bundles."""
