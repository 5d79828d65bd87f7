"""Code that runs inside the SageMaker containers (training and inference)."""
