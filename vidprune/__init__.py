"""vidprune: measure the efficiency/accuracy trade-off of video-transformer token pruning and merging."""

__version__ = "0.1.0"
