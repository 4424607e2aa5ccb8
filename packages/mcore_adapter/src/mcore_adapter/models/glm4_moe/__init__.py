"""The `glm4_moe` family: conversion template."""

from . import template  # noqa: F401  (registers the template)
