"""The inference container: SageMaker serving contract over the compiled FHE circuit."""
