"""Dataparser metadata keys shared by dataparsers and the datamanager.

Kept free of nerfstudio imports: nerfstudio's datamanager module discovers the registered dataparsers while it is
being imported, so a dataparser must not import the datamanager module (the import would be circular).
"""

SPARSE_DEPTH_KEY = "sparse_depth"
"""Per training image a float tensor [K, 4] of (x, y, z-depth, weight) per sparse point: pixel coordinates at the
dataparser's image resolution, depth along the camera axis in scene units, DS-NeRF confidence weight. A value of None
means the dataparser looked for sparse depth, found none and has said so (the datamanager then stays quiet)."""
