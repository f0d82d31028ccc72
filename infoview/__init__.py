"""infoview: self-supervised pretraining for images around mutual-information bounds."""

__version__ = "0.1.0"
