"""Public datasets and generic layouts: listing work items on the driver and tiling them in Ray tasks.

Each module lists the work items of one source kind from file names and
array headers (nothing is decoded on the driver) and provides the function
that tiles one item inside a Ray task.
"""
