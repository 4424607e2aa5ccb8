"""The `qwen2_moe` family: conversion template."""

from . import template  # noqa: F401  (registers the template)
