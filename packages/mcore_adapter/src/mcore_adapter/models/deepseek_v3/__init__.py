"""The `deepseek_v3` family: conversion template."""

from . import template  # noqa: F401  (registers the template)
