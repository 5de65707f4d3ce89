from dreamloom.serving.triton_model import TritonPythonModel  # noqa: F401
