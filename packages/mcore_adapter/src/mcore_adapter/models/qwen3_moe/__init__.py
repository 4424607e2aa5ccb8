"""The `qwen3_moe` family: conversion template."""

from . import template  # noqa: F401  (registers the template)
