"""fastmlp: fast, JIT-compiled multilayer perceptrons for CPUs.

>>> from fastmlp import Sequential, Dense, SGD
"""

from fastmlp.baselines import random_search
from fastmlp.gradcheck import gradcheck
from fastmlp.io import FormatError
from fastmlp.layers import Dense, Dropout, Layer, LayerNorm, Maxout
from fastmlp.losses import (MSE, L1, BinaryCrossEntropy, Huber, Loss, MulticlassHinge,
                            SoftmaxCrossEntropy)
from fastmlp.optimizers import SGD, Adam, AdamW, Optimizer
from fastmlp.sequential import DivergenceError, History, Sequential, from_torch, load
from fastmlp.streaming import ChunkShuffle, DataChangedError
from fastmlp.threads import (get_num_threads, get_reproducible, reproducible, set_num_threads,
                             set_reproducible, threads)

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AdamW",
    "BinaryCrossEntropy",
    "ChunkShuffle",
    "DataChangedError",
    "Dense",
    "DivergenceError",
    "Dropout",
    "FormatError",
    "History",
    "Huber",
    "L1",
    "Layer",
    "LayerNorm",
    "Loss",
    "MSE",
    "Maxout",
    "MulticlassHinge",
    "Optimizer",
    "SGD",
    "Sequential",
    "from_torch",
    "SoftmaxCrossEntropy",
    "get_num_threads",
    "get_reproducible",
    "gradcheck",
    "load",
    "random_search",
    "reproducible",
    "set_num_threads",
    "set_reproducible",
    "threads",
]
