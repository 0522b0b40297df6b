"""Tests of the cookiecutter template itself."""
