"""The `seed_oss` family: conversion template."""

from . import template  # noqa: F401  (registers the template)
