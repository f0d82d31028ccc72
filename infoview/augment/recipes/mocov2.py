"""MoCo v2's views (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning")."""

# SimCLR's colour ops and blur, crops of at least 20% of the image
RECIPE = {
    "crop": {"scale": [0.2, 1.0]},
    "flip": {"p": 0.5},
    "jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
    "grayscale": {"p": 0.2},
    "blur": {"p": 0.5, "min_size": 33},
}
