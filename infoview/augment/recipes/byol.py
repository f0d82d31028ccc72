"""BYOL's views (Grill et al. 2020, "Bootstrap your own latent"): the two views differ in blur and solarize."""

# table 6
RECIPE = {
    "crop": {"scale": [0.08, 1.0]},
    "flip": {"p": 0.5},
    "jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1, "p": 0.8},
    "grayscale": {"p": 0.2},
    "blur": {"min_size": 33},
    "views": [
        {"blur": {"p": 1.0}, "solarize": {"p": 0.0}},
        {"blur": {"p": 0.1}, "solarize": {"p": 0.2}},
    ],
}
