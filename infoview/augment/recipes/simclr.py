"""SimCLR's views (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations")."""

# appendix A, colour strength 0.5 as for CIFAR; no blur on views of 32 px or less
RECIPE = {
    "crop": {"scale": [0.08, 1.0]},
    "flip": {"p": 0.5},
    "jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
    "grayscale": {"p": 0.2},
    "blur": {"p": 0.5, "min_size": 33},
}
