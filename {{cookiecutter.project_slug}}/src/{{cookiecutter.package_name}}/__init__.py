"""The {{ cookiecutter.package_name }} package: models, data, training, tuning and serving."""

__version__ = "0.1.0"
