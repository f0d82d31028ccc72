"""The data layer's named choices, in a module that imports nothing: the loader and the .beton writer use them,
and the command modules offer them as their keys' choices (``infoview prepare --help``) without torch or numpy."""

BACKENDS = ("auto", "ffcv", "pytorch", "resident")  #: data.backend: the loader
DECODES = ("workers", "device")  #: data.decode: where the pytorch loader decodes JPEGs
WRITE_MODES = ("raw", "jpg", "smart")  #: infoview prepare's write_mode: how the .beton stores images
