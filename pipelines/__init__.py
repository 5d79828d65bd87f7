"""The training pipeline (SageMaker Pipeline definition) and its command line."""
