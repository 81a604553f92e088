"""Exercises: write Qwen3's core components yourself. See exercises/README.md.

A package (this file) so that exercises/test_rmsnorm.py and tests/test_rmsnorm.py can be collected in one
pytest run without their module names colliding, and so the stubs can import each other (`from .rmsnorm ...`).
"""
