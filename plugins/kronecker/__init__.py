"""Kronecker-product decomposition (KroneckerBERT, Tahaei et al. 2022). Work in progress."""
