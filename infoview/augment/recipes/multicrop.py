"""Multi-crop (Caron et al. 2020, SwAV): global crops at ``size`` and small local crops at about 3/7 of it."""

# 96 px local crops for 224 px global ones; SimCLR's colour ops
RECIPE = {
    "crop": {"scale": [0.14, 1.0]},
    "flip": {"p": 0.5},
    "jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
    "grayscale": {"p": 0.2},
    "blur": {"p": 0.5, "min_size": 33},
    "local": {"num": 6, "size_frac": 3 / 7, "crop": {"scale": [0.05, 0.14]}},
}
