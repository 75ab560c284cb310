"""Packaged anatomy: the Colin27 whole-head template and its brain mask at 2 mm."""
