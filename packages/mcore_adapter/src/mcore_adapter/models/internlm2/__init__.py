"""The `internlm2` family: conversion template (the HF implementation is roll_models')."""

from . import template  # noqa: F401  (registers the template)
