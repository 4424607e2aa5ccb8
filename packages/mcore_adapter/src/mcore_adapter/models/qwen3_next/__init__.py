"""The `qwen3_next` family: conversion template (the model is McaGPTModel: Megatron builds
the Gated DeltaNet layers from the config)."""

from . import template  # noqa: F401  (registers the template)
