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

# `swi` itself stays the submodule here (the function is qsnet_jax.physics.swi.swi).
from qsnet_jax.physics.swi import (
    dipole_kernel,
    field_from_susceptibility,
    highpass_phase,
    phase_from_field,
    phase_mask,
    swi_from_susceptibility,
)

__all__ = [
    "MRFDictionary",
    "MRFSchedule",
    "build_dictionary",
    "dictionary_grid",
    "dipole_kernel",
    "field_from_susceptibility",
    "fisp_schedule",
    "highpass_phase",
    "match",
    "phase_from_field",
    "phase_mask",
    "simulate_fisp",
    "swi_from_susceptibility",
]
