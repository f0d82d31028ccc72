"""The pretraining engine: methods (simclr, moco, la), its checkpoint and monitors on the one fit loop (training/).

``infoview pretrain`` runs :func:`infoview.pretrain.engine.run`; see that
module for the keys. Submodules are imported on use, so importing this
package costs nothing.
"""
