"""The models package's named choices, importing nothing: the command modules offer these very lists
(``model.streams``) without importing torch, and :mod:`infoview.models.encoder` checks against them."""

#: rgb: one network on the image; lab: one on L and one on ab of CIELab (CMC)
STREAMS = ("rgb", "lab")
