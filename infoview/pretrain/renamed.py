"""Pretraining keys that changed their name, ``{old: new}``.

A config file or a command line that gives an old name is read with the new one, with a one-line note
(``infoview.config.rename_keys``); so is the config a checkpoint of an earlier version holds, when it is
resumed. This module imports nothing, so that the command's declaration (``infoview pretrain --help``) reads
it without torch.
"""

RENAMED = {
    "model.pred_hidden": "moco.pred_hidden",  # the predictor is method=moco's alone: its key lives in its section
}
