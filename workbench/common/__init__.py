"""Small utilities every layer may use: errors, atomic files, versions, the data directory.

Nothing here imports another workbench package: this is the floor under the model.
"""
