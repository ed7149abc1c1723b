"""MR physics in JAX: channels and normalization, signal equations and protocols, EPG FISP-MRF,
dictionary matching, susceptibility and SWI."""

from qsnet_jax.physics.dictionary import (
    MRFDictionary,
    build_dictionary,
    dictionary_grid,
    match,
)
from qsnet_jax.physics.epg import simulate_fisp
from qsnet_jax.physics.mrf import MRFSchedule, fisp_schedule

__all__ = [
    "MRFDictionary",
    "MRFSchedule",
    "build_dictionary",
    "dictionary_grid",
    "fisp_schedule",
    "match",
    "simulate_fisp",
]
