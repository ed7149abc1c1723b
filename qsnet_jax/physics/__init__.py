"""MR physics in JAX: channels and normalization, signal equations and protocols, EPG FISP-MRF,
dictionary matching, susceptibility and SWI."""
