"""The training machinery that pretraining and every evaluator share, and nothing of images: distributed
set-up and collectives, optimisers and schedules, the evaluators' fit loop, checkpoint files and RNG states,
the metrics log, signals, and running out of memory as one line.

It imports only the base (errors, config, utils): the backbone side (infoview.backbones) and the tasks sit
above it.
"""
