"""The augment package's named choices, importing nothing: the command modules offer these very lists
(``augment.backend``) without importing torch, and :mod:`infoview.augment.views` checks against them."""

#: how views are made: the fused batched kernels, or kornia's modules
BACKENDS = ("fused", "kornia")
