"""What pretraining and every evaluator share: distributed helpers, optimisers and schedules, the evaluators'
fit loop, checkpoint I/O, the metrics log, the encoder a config or checkpoint describes, backbone specs and
exports, frozen features, the kNN classifier."""
