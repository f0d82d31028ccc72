"""The pretraining engine: methods (simclr, moco, la), the loop, optimisers, checkpoints, monitors.

``infoview pretrain`` runs :func:`infoview.pretrain.engine.run`; see that
module for the keys. Submodules are imported on use, so importing this
package costs nothing.
"""
