from .registry import SIZES, build_model, input_shape, model_names, register  # noqa: F401
