"""The per-frame steps of the data path: features -> segments -> SuperSegments -> VLAD -> PCA
-> index search -> ranking -> verification -> confidence (+ temporal filter, position)."""
