"""The evaluators' named choices, in a module that imports nothing heavy: the command modules offer them as
their keys' choices (``infoview detect --help``) without importing torch, and the evaluators use them."""
from infoview.training.choices import DECAYS

TASKS = ("segm", "bbox")  # detect: Mask R-CNN or Faster R-CNN
SCHEDULES = DECAYS  # detect: what follows the warm-up
OPTIMIZERS = ("sgd", "adamw")  # detect, segment
PRECISIONS = ("fp32", "bf16")  # detect
HEADS = ("fcn", "deeplabv3")  # segment
